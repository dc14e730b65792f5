"""Turn a live ``nn.Module`` into the layer IR by running it once with forward hooks.

The hooks see the real input of every call, so shapes come from the forward pass, not
from guesses about the architecture.  Understood: ``nn.Conv2d`` (dense, grouped,
depthwise; a 1xK / Kx1 depthwise conv is recorded as fuse_row / fuse_col),
``nn.Linear``, ``fuseops.nn.FuSeConv2d`` and ``FuSeConvBNAct`` (two 1-D depthwise
layers) and ``fuseops.nn.BlockConv2d`` (with its block grid).  Any other module that
owns weights and is not a normalisation layer is listed in ``Trace.unsupported``.
Matrix products written as functions inside ``forward`` (``x @ w``) have no module and
are not seen; docs/hwmodel-systolic.md says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hwmodel.layers import Layer, Unsupported, conv_kind

# Modules that own parameters but cost nothing in the model (as BatchNorm in the paper).
_FREE_WITH_PARAMS: tuple[type, ...] = (
    nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.PReLU,
    nn.Embedding, nn.EmbeddingBag,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

# Modules that compute but have no parameters of their own are checked by type.
_UNSUPPORTED_TYPES: tuple[type, ...] = (
    nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.RNNBase,
    nn.MultiheadAttention, nn.Bilinear,
)


class Trace(list):
    """``list[Layer]`` in execution order, plus ``unsupported``: modules that ran and own
    compute the layer IR cannot describe."""

    def __init__(self, layers: Sequence[Layer] = (), unsupported: Sequence[Unsupported] = ()) -> None:
        super().__init__(layers)
        self.unsupported: list[Unsupported] = list(unsupported)

    def __repr__(self) -> str:
        return f"Trace({len(self)} layers, {len(self.unsupported)} unsupported)"


def _fuse_classes() -> tuple[type | None, type | None, type | None]:
    """(FuSeConv2d, FuSeConvBNAct, BlockConv2d) where fuseops provides them."""
    try:
        import fuseops.nn as fnn
    except ImportError:  # hwmodel used without fuseops' layers
        return None, None, None
    # BlockConv2d may not exist yet in this fuseops; tracing then simply never meets one.
    return (getattr(fnn, "FuSeConv2d", None), getattr(fnn, "FuSeConvBNAct", None),
            getattr(fnn, "BlockConv2d", None))


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _conv_padding(conv: nn.Conv2d, in_h: int, in_w: int) -> tuple[int, int, int, int]:
    """(pad_h, pad_w, in_h, in_w).  Padding "same" with an even kernel pads one more pixel
    at the end than at the start; that extra row/column is folded into the input size so
    the padded size and the output size stay exact."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return 0, 0, in_h, in_w
        totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return totals[0] // 2, totals[1] // 2, in_h + totals[0] % 2, in_w + totals[1] % 2
    return conv.padding[0], conv.padding[1], in_h, in_w


def _spatial(x: torch.Tensor, name: str) -> tuple[int, int, int, int]:
    """(N, C, H, W) of a conv input, batched or not."""
    if x.dim() == 4:
        return tuple(x.shape)  # type: ignore[return-value]
    if x.dim() == 3:
        return (1, *x.shape)  # type: ignore[return-value]
    raise ValueError(f"module {name!r} got a {x.dim()}-D input {tuple(x.shape)}; expected (N, C, H, W)")


def conv2d_layer(name: str, conv: nn.Conv2d, x: torch.Tensor, blocks=None, *, stride=None,
                 meta: dict | None = None) -> Layer:
    """The Layer of an nn.Conv2d applied to ``x``; ``blocks`` = (row spans, col spans)."""
    batch, _, in_h, in_w = _spatial(x, name)
    pad_h, pad_w, in_h, in_w = _conv_padding(conv, in_h, in_w)
    stride_h, stride_w = stride if stride is not None else conv.stride
    block_rows, block_cols = blocks if blocks is not None else (None, None)
    return Layer(
        name=name, kind=conv_kind(conv.groups, conv.in_channels, *conv.kernel_size), batch=batch,
        in_channels=conv.in_channels, in_h=in_h, in_w=in_w,
        out_channels=conv.out_channels, kernel_h=conv.kernel_size[0], kernel_w=conv.kernel_size[1],
        stride_h=stride_h, stride_w=stride_w, pad_h=pad_h, pad_w=pad_w, dilation_h=conv.dilation[0],
        dilation_w=conv.dilation[1], groups=conv.groups, block_rows=block_rows, block_cols=block_cols,
        meta=meta or {},
    )


def block_spans(height: int, width: int, block_size: int, blocking: str = "fixed"):
    """fuseops' block grid as plain (start, stop) spans along H and W, for layer lists built by hand."""
    import fuseops

    rows, cols = fuseops.block_grid(height, width, block_size, blocking)
    return tuple((int(a), int(b)) for a, b in rows), tuple((int(a), int(b)) for a, b in cols)


def block_conv2d_layer(name: str, conv: nn.Conv2d, x: torch.Tensor) -> Layer:
    """A fuseops.nn.BlockConv2d: the grid from ``fuseops.block_grid``, padded per block."""
    _, _, in_h, in_w = _spatial(x, name)
    blocks = block_spans(in_h, in_w, conv.block_size, conv.blocking)
    stride_mode = getattr(conv, "stride_mode", "conv")
    # stride_mode="pool" runs the block conv at stride 1 and max-pools afterwards (free).
    stride = (1, 1) if stride_mode == "pool" else None
    meta = {"module": type(conv).__name__, "block_size": conv.block_size, "blocking": conv.blocking,
            "padding_mode": getattr(conv, "padding_mode", None), "stride_mode": stride_mode}
    return conv2d_layer(name, conv, x, blocks, stride=stride, meta=meta)


def fuse_layers(name: str, fuse: nn.Module, x: torch.Tensor) -> list[Layer]:
    """The two 1-D depthwise layers of a FuSeConv2d: a 1xK conv over its C_r row channels
    and a Kx1 conv over its C_c column channels, each padded along its own axis only."""
    batch, _, in_h, in_w = _spatial(x, name)
    k, s, d, p = fuse.kernel_size, fuse.stride, fuse.dilation, fuse.padding
    meta = {"module": "FuSeConv2d", "variant": fuse.variant}
    layers = []
    if fuse.c_row:
        layers.append(Layer(f"{name}.row", "fuse_row", batch, fuse.c_row, in_h, in_w, fuse.c_row,
                            kernel_h=1, kernel_w=k, stride_h=s, stride_w=s, pad_h=0, pad_w=p,
                            dilation_h=1, dilation_w=d, groups=fuse.c_row, meta=dict(meta)))
    if fuse.c_col:
        layers.append(Layer(f"{name}.col", "fuse_col", batch, fuse.c_col, in_h, in_w, fuse.c_col,
                            kernel_h=k, kernel_w=1, stride_h=s, stride_w=s, pad_h=p, pad_w=0,
                            dilation_h=d, dilation_w=1, groups=fuse.c_col, meta=dict(meta)))
    return layers


def linear_layer(name: str, linear: nn.Linear, x: torch.Tensor) -> Layer:
    """A Linear applied to every row of ``x`` (all leading dimensions are the batch)."""
    rows = x.numel() // linear.in_features
    return Layer(name, "linear", max(rows, 1), linear.in_features, 1, 1, linear.out_features)


def _check_input_shape(input_shape: object) -> tuple[int, ...]:
    if isinstance(input_shape, torch.Size):
        input_shape = tuple(input_shape)
    if not isinstance(input_shape, Sequence) or isinstance(input_shape, str) or not input_shape:
        raise TypeError(f"input_shape must be a non-empty sequence of ints such as (1, 3, 224, 224), "
                        f"got {input_shape!r}")
    for i, dim in enumerate(input_shape):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"input_shape[{i}] must be an int >= 1, got {dim!r}")
    return tuple(input_shape)


def _shape_stand_in(module: nn.Module, fuse_cls, fuse_bn_cls, block_cls):
    """A forward that returns zeros of the module's output shape without computing it, or
    None for modules that keep their own forward.  Output sizes come from the same layer
    records the cost models read, so what is traced is what is costed."""
    if fuse_cls is not None and isinstance(module, fuse_cls) or fuse_bn_cls is not None and isinstance(
            module, fuse_bn_cls):
        from fuseops.fuse_conv.geometry import fuse_geometry

        conv = module if isinstance(module, fuse_cls) else module.conv

        def fuse_forward(x):
            n, c, h, w = _spatial(x, "FuSe layer")
            g = fuse_geometry((n, c, h, w), conv.kernel_size, conv.c_row, conv.c_col, conv.variant == "full",
                              conv.stride, conv.padding, conv.dilation)
            return x.new_zeros(_batched_like(x, (g.out_channels, g.out_height, g.out_width)))
        return fuse_forward
    if block_cls is not None and isinstance(module, block_cls):
        def block_forward(x):
            # with stride_mode="pool": max-pooling with kernel = stride (floor) after the conv
            return x.new_zeros(_batched_like(x, _expected_output(block_conv2d_layer("", module, x), module)))
        return block_forward
    # A subclass with its own forward (e.g. one that pads inside forward) keeps it: the
    # stand-in would give the wrong shape.  Its recorded layer is then checked in the hook.
    if isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward:
        def conv_forward(x):
            layer = conv2d_layer("", module, x)
            return x.new_zeros(_batched_like(x, (module.out_channels, layer.out_h, layer.out_w)))
        return conv_forward
    if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
        def linear_forward(x):
            if x.shape[-1] != module.in_features:
                raise ValueError(f"Linear({module.in_features}, {module.out_features}) got input of shape "
                                 f"{tuple(x.shape)}")
            return x.new_zeros((*x.shape[:-1], module.out_features))
        return linear_forward
    return None


def _expected_output(layer: Layer, module: nn.Module) -> tuple[int, ...]:
    """The trailing output dims a layer record implies: (C, H, W), or (features,) for a Linear."""
    if layer.kind == "linear":
        return (layer.out_channels,)
    out_h, out_w = layer.out_h, layer.out_w
    if getattr(module, "stride_mode", "conv") == "pool" and hasattr(module, "block_size"):
        out_h, out_w = out_h // module.stride[0], out_w // module.stride[1]
    return (layer.out_channels, out_h, out_w)


def _batched_like(x: torch.Tensor, chw: tuple[int, int, int]) -> tuple[int, ...]:
    return (x.shape[0], *chw) if x.dim() == 4 else chw


def trace(model: nn.Module, input_shape: Sequence[int], *, compute: bool = False) -> Trace:
    """Run ``model`` once on a zero input of ``input_shape`` (eval mode, no grad; the
    training flags are restored) and return its compute layers in call order.

    With ``compute=False`` (the default) the convs, linears and fuseops layers do no
    arithmetic: for the one call, each returns zeros of its output shape, so a network
    traces in a fraction of its run time; the cheap layers in between (BatchNorm,
    activations, pooling, additions) run as usual.  ``compute=True`` runs everything.

    A module called several times yields one Layer per call ("name", "name#2", ...).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    shape = _check_input_shape(input_shape)
    fuse_cls, fuse_bn_cls, block_cls = _fuse_classes()
    layers: list[Layer] = []
    unsupported: list[Unsupported] = []
    calls: dict[str, int] = {}
    inside_fuse_block = [0]  # FuSeConvBNAct is recorded whole; its inner FuSeConv2d is not

    def call_name(name: str) -> str:
        calls[name] = calls.get(name, 0) + 1
        return name if calls[name] == 1 else f"{name}#{calls[name]}"

    def pre_hook(module, args):
        if fuse_bn_cls is not None and isinstance(module, fuse_bn_cls):
            inside_fuse_block[0] += 1

    def record(layer: Layer, module: nn.Module, output) -> None:
        # The layer's output size must be the one the forward produced; a module whose
        # forward does more than its attributes say (padding inside forward, say) is not
        # costed rather than costed wrongly.
        expected = _expected_output(layer, module)
        got = tuple(output.shape[-len(expected):]) if isinstance(output, torch.Tensor) else None
        if got != expected:
            unsupported.append(Unsupported(layer.name, type(module).__name__,
                                           f"its output {got} differs from the {expected} its attributes "
                                           "imply"))
        else:
            layers.append(layer)

    def make_hook(name: str):
        def hook(module, args, output):
            if fuse_bn_cls is not None and isinstance(module, fuse_bn_cls):
                inside_fuse_block[0] -= 1
                if inside_fuse_block[0] == 0:
                    layers.extend(fuse_layers(call_name(name or "<root>"), module.conv, args[0]))
                return
            if inside_fuse_block[0]:
                return
            label = name or "<root>"
            if block_cls is not None and isinstance(module, block_cls):
                record(block_conv2d_layer(call_name(label), module, args[0]), module, output)
            elif isinstance(module, nn.Conv2d):
                record(conv2d_layer(call_name(label), module, args[0]), module, output)
            elif isinstance(module, nn.Linear):
                record(linear_layer(call_name(label), module, args[0]), module, output)
            elif fuse_cls is not None and isinstance(module, fuse_cls):
                layers.extend(fuse_layers(call_name(label), module, args[0]))
            elif isinstance(module, _UNSUPPORTED_TYPES) or (
                    _owns_parameters(module) and not isinstance(module, _FREE_WITH_PARAMS)):
                unsupported.append(Unsupported(call_name(label), type(module).__name__,
                                               "no cost model for this module type"))
        return hook

    handles = []
    training = {m: m.training for m in model.modules()}
    stand_ins = {}
    threads = torch.get_num_threads()
    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(make_hook(name)))
            if not compute:
                forward = _shape_stand_in(module, fuse_cls, fuse_bn_cls, block_cls)
                if forward is not None:
                    stand_ins[module] = module.__dict__.get("forward")
                    module.forward = forward  # an instance attribute, removed below
        param = next((p for p in model.parameters() if p.is_floating_point()), None)
        dtype = param.dtype if param is not None else torch.float32
        model.eval()
        if not compute:
            # What is left to run is cheap elementwise work on small maps, where OpenMP's
            # thread start-up and spinning cost more than the work (10x on a busy machine).
            torch.set_num_threads(1)
        with torch.no_grad():
            model(torch.zeros(shape, dtype=dtype, device=param.device if param is not None else "cpu"))
    finally:
        torch.set_num_threads(threads)
        for handle in handles:
            handle.remove()
        for module, flag in training.items():
            module.training = flag
        for module, previous in stand_ins.items():
            del module.forward
            if previous is not None:
                module.forward = previous
    return Trace(layers, unsupported)

