"""Model conversion: depthwise -> FuSe, Conv2d -> BlockConv2d, and BatchNorm folding.

Every function here **returns a converted deep copy** and leaves the model it is given
untouched: ``new_model, replaced = to_fuse(model)``.  ``replaced`` lists the dotted names
(as in ``model.named_modules()``) of the modules that were replaced, in model order.

What is matched:

* inside any ``nn.Sequential`` (including subclasses such as torchvision's
  ``Conv2dNormActivation``): a layer followed directly by ``nn.BatchNorm2d`` (and, for
  :func:`to_fuse`, an activation);
* in other modules ("torchvision-style blocks" such as ResNet's): attribute pairs named
  ``conv<suffix>`` / ``bn<suffix>`` (``conv1``/``bn1``, ``conv``/``bn``), which those blocks
  apply in that order.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

import torch
from torch import nn

from fuseops import _checks
from fuseops.block_conv import BLOCKINGS, PADDING_MODES, STRIDE_MODES
from fuseops.nn import BlockConv2d, FuSeConv2d, FuSeConvBNAct

Filter = Callable[[str, nn.Module], bool]

# Activation modules the FuSe kernels can fuse, by the name they take.
_ACTIVATION_NAMES: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish"}
_CONV_MODES = {"zeros": "constant", "replicate": "replicate", "reflect": "reflect"}
_PAIR = re.compile(r"conv(\w*)")


# -- shared helpers ------------------------------------------------------------------------------

def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return model


def _check_filter(filter: object) -> Filter | None:  # noqa: A002 (the public argument's name)
    if filter is not None and not callable(filter):
        raise TypeError(f"filter must be None or a callable (name, module) -> bool, got {type(filter).__name__}")
    return filter


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _in_model_order(root: nn.Module, names: list[str]) -> list[str]:
    order = {name: i for i, (name, _) in enumerate(root.named_modules(remove_duplicate=False))}
    return sorted(names, key=lambda name: order.get(name, len(order)))


def _wanted(filter: Filter | None, name: str, module: nn.Module) -> bool:  # noqa: A002
    return filter is None or bool(filter(name, module))


def _adjacent_pairs(root: nn.Module):
    """(parent, parent_name, key_a, key_b) for consecutive children a, b of every Sequential,
    and for conv<s>/bn<s> attribute pairs of other modules.  A snapshot: safe to edit while iterating."""
    pairs = []
    for parent_name, parent in list(root.named_modules()):
        keys = list(parent._modules)
        if isinstance(parent, nn.Sequential):
            pairs += [(parent, parent_name, a, b) for a, b in zip(keys, keys[1:])]
        else:
            for key in keys:
                match = _PAIR.fullmatch(key)
                if match and f"bn{match.group(1)}" in parent._modules:
                    pairs.append((parent, parent_name, key, f"bn{match.group(1)}"))
    return pairs


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with bn(y) == y * scale + shift in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm2d without running statistics (track_running_stats=False)")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


# -- to_fuse -------------------------------------------------------------------------------------

def _is_depthwise_kxk(module: nn.Module) -> bool:
    if type(module) is not nn.Conv2d:  # subclasses (e.g. BlockConv2d) compute something else
        return False
    k_h, k_w = module.kernel_size
    same = module.dilation[0] * (k_h - 1) // 2
    return (module.groups == module.in_channels == module.out_channels and k_h == k_w and k_h > 1 and k_h % 2 == 1
            and module.stride[0] == module.stride[1] and module.dilation[0] == module.dilation[1]
            and module.padding == (same, same) and module.padding_mode == "zeros")


def _fuse_block(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, activation: str | None, variant: str) -> nn.Module:
    """The FuSe replacement for conv (+ bn) (+ activation), initialised from their weights.

    The 1-D filters start as the KxK filter's centre row / centre column; the BN statistics
    are copied to each part's BN (to both for "full"), a conv bias is absorbed into the BN mean."""
    if bn is None:
        return FuSeConv2d.from_depthwise(conv, variant, activation=activation)
    fuse = FuSeConv2d.from_depthwise(conv, variant)
    block = FuSeConvBNAct(fuse.channels, fuse.kernel_size, fuse.stride, variant=variant, activation=activation,
                          dilation=fuse.dilation, eps=bn.eps, momentum=bn.momentum)
    block = block.to(device=conv.weight.device, dtype=conv.weight.dtype)
    rows = slice(None) if variant == "full" else slice(0, fuse.c_row)
    cols = slice(None) if variant == "full" else slice(fuse.c_row, None)
    with torch.no_grad():
        block.conv.weight_row.copy_(fuse.weight_row)
        block.conv.weight_col.copy_(fuse.weight_col)
        # bn(y + b) has mean running_mean - b: the bias moves into the statistics.
        mean = bn.running_mean if conv.bias is None or bn.running_mean is None else bn.running_mean - conv.bias
        for part, index in ((block.bn_row, rows), (block.bn_col, cols)):
            if part is None:
                continue
            for attr, source in (("weight", bn.weight), ("bias", bn.bias), ("running_mean", mean),
                                 ("running_var", bn.running_var)):
                if source is not None and getattr(part, attr) is not None:
                    getattr(part, attr).copy_(source[index])
            if bn.num_batches_tracked is not None:
                part.num_batches_tracked.copy_(bn.num_batches_tracked)
    return block


def _first_conv(module: nn.Module) -> tuple[nn.Module, str] | None:
    """(container, key) of the first module run by ``module`` if that is an nn.Conv2d."""
    while isinstance(module, nn.Sequential) and len(module):
        key = next(iter(module._modules))
        child = module._modules[key]
        if type(child) is nn.Conv2d:
            return module, key
        module = child
    return None


def _widen_consumer(root: nn.Module, parents: dict[str, str], seq_name: str, after: str, channels: int,
                    name: str) -> None:
    """Double the inputs of the conv that consumes a full-FuSe output: W' = [W/2, W/2].

    The consumer is the module after ``after`` in Sequential ``seq_name`` (or that module's first
    conv) or, when the match ends that Sequential, the next sibling of the Sequential in its
    parent Sequential, and so on up."""
    modules = dict(root.named_modules())
    seq, key = modules[seq_name], after
    while True:
        keys = list(seq._modules)
        index = keys.index(key)
        if index + 1 < len(keys):
            next_key = keys[index + 1]
            following = seq._modules[next_key]
            found = (seq, next_key) if type(following) is nn.Conv2d else _first_conv(following)
            if found is not None:
                container, conv_key = found
                conv = container._modules[conv_key]
                if conv.groups == 1 and conv.in_channels == channels:
                    container._modules[conv_key] = _widened(conv)
                    return
            break
        parent_name = parents.get(seq_name)
        if parent_name is None or not isinstance(modules[parent_name], nn.Sequential):
            break
        key = seq_name.rsplit(".", 1)[-1]
        seq, seq_name = modules[parent_name], parent_name
    raise ValueError(
        f'variant="full" doubles the channels of {name!r} ({channels} -> {2 * channels}), so its output must go '
        f"straight into a groups=1 nn.Conv2d with {channels} inputs (the next module in the same nn.Sequential); "
        f'none was found. Use variant="half", or a filter that skips {name!r}.'
    )


def _widened(conv: nn.Conv2d) -> nn.Conv2d:
    """conv with twice the inputs, [W/2, W/2]: on [y, y] it computes what conv computes on y."""
    wide = nn.Conv2d(2 * conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, 1, conv.bias is not None, conv.padding_mode,
                     device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        wide.weight.copy_(torch.cat([conv.weight, conv.weight], dim=1) / 2)
        if conv.bias is not None:
            wide.bias.copy_(conv.bias)
    return wide


def to_fuse(model: nn.Module, variant: str = "half", *, filter: Filter | None = None,  # noqa: A002
            ) -> tuple[nn.Module, list[str]]:
    """Replace KxK depthwise convs (with their BatchNorm and activation) by FuSe layers.

    Returns ``(converted_copy, replaced_names)``; ``model`` is not modified.

    A matched ``Conv2d(C, C, K, groups=C, padding=same)`` -> ``BatchNorm2d(C)`` -> activation
    (ReLU, ReLU6 or Hardswish; optional) becomes one :class:`~fuseops.nn.FuSeConvBNAct` (one BN per
    1-D part, the activation fused) at the conv's place, and the BN and activation become
    ``nn.Identity``.  A depthwise conv without a BN becomes a :class:`~fuseops.nn.FuSeConv2d`.
    The 1-D filters start from the KxK filter's centre row and column and the BN statistics are
    copied, so the result is a starting point for fine-tuning (it does not compute the same
    function: FuSe is a different operator).

    ``variant="full"`` doubles the channels, so the conv that consumes them (the next module in
    the same ``nn.Sequential``, or the first conv of the next sibling) is widened to 2C inputs
    with weights ``[W/2, W/2]``; a ValueError names the layer when there is no such conv.
    Depthwise convs in ``conv<s>``/``bn<s>`` attribute pairs are converted for "half" only.

    ``filter(name, conv) -> bool`` selects which depthwise convs to convert (default: all).
    """
    _check_model(model)
    if not isinstance(variant, str):
        raise TypeError(f"variant must be a str, got {type(variant).__name__}")
    _checks.choice("variant", variant, ("full", "half"))
    _check_filter(filter)
    root = copy.deepcopy(model)
    parents = {}
    for parent_name, parent in root.named_modules():
        for key in parent._modules:
            parents[_join(parent_name, key)] = parent_name
    replaced = []
    for parent_name, parent in list(root.named_modules()):
        keys = list(parent._modules)
        sequential = isinstance(parent, nn.Sequential)
        for i, key in enumerate(keys):
            conv = parent._modules[key]
            name = _join(parent_name, key)
            if not _is_depthwise_kxk(conv) or not _wanted(filter, name, conv):
                continue
            channels = conv.in_channels
            if sequential:
                span = [key]
                bn = parent._modules[keys[i + 1]] if i + 1 < len(keys) else None
                if isinstance(bn, nn.BatchNorm2d) and bn.num_features == channels:
                    span.append(keys[i + 1])
                else:
                    bn = None
                act_module = parent._modules[keys[i + len(span)]] if i + len(span) < len(keys) else None
                activation = _ACTIVATION_NAMES.get(type(act_module))
                if activation is not None:
                    span.append(keys[i + len(span)])
                parent._modules[key] = _fuse_block(conv, bn, activation, variant)
                for other in span[1:]:
                    parent._modules[other] = nn.Identity()
                if variant == "full":
                    _widen_consumer(root, parents, parent_name, span[-1], channels, name)
            else:
                match = _PAIR.fullmatch(key)
                bn = parent._modules.get(f"bn{match.group(1)}") if match else None
                if not (isinstance(bn, nn.BatchNorm2d) and bn.num_features == channels):
                    continue
                if variant == "full":
                    raise ValueError(f'variant="full" changes the channels of {name!r}, which sits in a '
                                     f"{type(parent).__name__} whose forward fuseops cannot rewire; use \"half\"")
                parent._modules[key] = _fuse_block(conv, bn, None, variant)
                parent._modules[f"bn{match.group(1)}"] = nn.Identity()
            replaced.append(name)
    return root, _in_model_order(model, replaced)


# -- to_block ------------------------------------------------------------------------------------

def to_block(model: nn.Module, block_size: int | tuple[int, int], *, padding_mode: str = "constant",
             blocking: str = "fixed", stride_mode: str = "conv", filter: Filter | None = None,  # noqa: A002
             ) -> tuple[nn.Module, list[str]]:
    """Replace every ``nn.Conv2d`` by a :class:`~fuseops.nn.BlockConv2d` with the same weights.

    Returns ``(converted_copy, replaced_names)``; ``model`` is not modified.  Only modules whose
    type is exactly ``nn.Conv2d`` are replaced (subclasses may compute something else).  With
    one block covering each map (e.g. ``blocking="hierarchical", block_size=1``) the converted
    model computes exactly what the original does.  ``filter(name, conv) -> bool`` selects
    convs (default: all, 1x1 and stem included, as the paper's networks).

    A conv whose own ``padding_mode`` is not "zeros" must agree with ``padding_mode`` (else
    ValueError), so that one-block outputs stay the same.
    """
    _check_model(model)
    _checks.pair("block_size", block_size, minimum=1)
    for arg, value, options in (("padding_mode", padding_mode, PADDING_MODES), ("blocking", blocking, BLOCKINGS),
                                ("stride_mode", stride_mode, STRIDE_MODES)):
        if not isinstance(value, str):
            raise TypeError(f"{arg} must be a str, got {type(value).__name__}")
        _checks.choice(arg, value, options)
    _check_filter(filter)
    root = copy.deepcopy(model)
    if type(root) is nn.Conv2d:
        if not _wanted(filter, "", root):
            return root, []
        return _block_of(root, "", block_size, padding_mode, blocking, stride_mode), [""]
    replaced = []
    for parent_name, parent in list(root.named_modules()):
        for key, conv in list(parent._modules.items()):
            name = _join(parent_name, key)
            if type(conv) is nn.Conv2d and _wanted(filter, name, conv):
                parent._modules[key] = _block_of(conv, name, block_size, padding_mode, blocking, stride_mode)
                replaced.append(name)
    return root, _in_model_order(model, replaced)


def _block_of(conv: nn.Conv2d, name: str, block_size, padding_mode: str, blocking: str,
              stride_mode: str) -> BlockConv2d:
    if conv.padding_mode != "zeros" and _CONV_MODES.get(conv.padding_mode) != padding_mode:
        raise ValueError(f"conv {name!r} pads with padding_mode={conv.padding_mode!r} but padding_mode="
                         f"{padding_mode!r} was asked for; pass the matching block mode")
    if isinstance(conv.padding, str):
        raise ValueError(f"conv {name!r} has padding={conv.padding!r}; give it explicit integer padding first")
    return BlockConv2d.from_conv(conv, block_size, padding_mode=padding_mode, blocking=blocking,
                                 stride_mode=stride_mode)


# -- fold_bn -------------------------------------------------------------------------------------

def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale, shift = _bn_affine(bn)
    folded = copy.deepcopy(conv)
    with torch.no_grad():
        bias = shift if conv.bias is None else conv.bias * scale + shift
        folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        folded.bias = nn.Parameter(bias.to(conv.weight.dtype).clone())
    return folded


def _folded_fuse(conv: FuSeConv2d, bn_scale: torch.Tensor, bn_shift: torch.Tensor,
                 activation: str | None) -> FuSeConv2d:
    folded = FuSeConv2d(conv.channels, conv.kernel_size, conv.stride, variant=conv.variant,
                        split=None if conv.variant == "full" else conv.c_row, bias=True, activation=activation,
                        dilation=conv.dilation, device=conv.weight_row.device, dtype=conv.weight_row.dtype)
    with torch.no_grad():
        folded.weight_row.copy_(conv.weight_row * bn_scale[: conv.c_row].view(-1, 1, 1, 1))
        folded.weight_col.copy_(conv.weight_col * bn_scale[conv.c_row :].view(-1, 1, 1, 1))
        bias = bn_shift if conv.bias is None else conv.bias * bn_scale + bn_shift
        folded.bias.copy_(bias)
    return folded


def fold_bn(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Fold eval-mode BatchNorms into the conv or FuSe layer before them, for inference.

    Returns ``(folded_copy, replaced_names)``, the copy in eval mode; ``model`` is not modified.
    Folded: ``Conv2d`` (and ``BlockConv2d``) or ``FuSeConv2d`` followed by ``BatchNorm2d`` in an
    ``nn.Sequential`` or as a ``conv<s>``/``bn<s>`` attribute pair (the conv gains the bias, the BN
    becomes ``nn.Identity``), and every :class:`~fuseops.nn.FuSeConvBNAct` (which becomes a
    ``FuSeConv2d`` with bias and the activation fused).  ``replaced_names`` lists the convs and
    FuSe blocks that were rewritten.  The folded model's eval outputs equal the original's up to
    float rounding; it must not be trained (the BN statistics are baked in).
    """
    _check_model(model)
    root = copy.deepcopy(model).eval()
    if isinstance(root, FuSeConvBNAct):
        return _fold_fuse_block(root), [""]
    replaced = []
    for parent_name, parent in list(root.named_modules()):
        for key, child in list(parent._modules.items()):
            if isinstance(child, FuSeConvBNAct):
                parent._modules[key] = _fold_fuse_block(child)
                replaced.append(_join(parent_name, key))
    for parent, parent_name, key_a, key_b in _adjacent_pairs(root):
        conv, bn = parent._modules[key_a], parent._modules[key_b]
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None:
            continue
        if isinstance(conv, FuSeConv2d) and bn.num_features == conv.out_channels:
            if conv.activation is not None:
                continue  # BN after a fused activation cannot be folded into the conv
            scale, shift = _bn_affine(bn)
            parent._modules[key_a] = _folded_fuse(conv, scale, shift, None)
        elif isinstance(conv, nn.Conv2d) and bn.num_features == conv.out_channels:
            parent._modules[key_a] = _folded_conv(conv, bn)
        else:
            continue
        parent._modules[key_b] = nn.Identity()
        replaced.append(_join(parent_name, key_a))
    return root.eval(), _in_model_order(model, replaced)


def _fold_fuse_block(block: FuSeConvBNAct) -> FuSeConv2d:
    weight_row, weight_col, shift = block.folded_parameters()
    folded = FuSeConv2d(block.conv.channels, block.conv.kernel_size, block.conv.stride, variant=block.conv.variant,
                        split=None if block.conv.variant == "full" else block.conv.c_row, bias=True,
                        activation=block.activation, dilation=block.conv.dilation,
                        device=weight_row.device, dtype=weight_row.dtype)
    with torch.no_grad():  # FuSeConvBNAct's conv has no bias: the BN shift is the whole bias
        folded.weight_row.copy_(weight_row)
        folded.weight_col.copy_(weight_col)
        folded.bias.copy_(shift)
    return folded.eval()
