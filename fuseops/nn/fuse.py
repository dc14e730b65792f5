"""FuSe convolution layers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fuseops import _checks, activations
from fuseops.fuse_conv import VARIANTS, fuse_conv2d


def _split_counts(channels: int, variant: str, split: int | None) -> tuple[int, int]:
    """(C_r, C_c): filters of the row and column parts."""
    if variant == "full":
        if split is not None:
            raise ValueError('split applies to variant="half" only; leave it None for "full"')
        return channels, channels
    c_row = math.ceil(channels / 2) if split is None else _checks.integer("split", split, minimum=0)
    if c_row > channels:
        raise ValueError(f"split must be <= channels={channels}, got {c_row}")
    return c_row, channels - c_row


class FuSeConv2d(nn.Module):
    """Drop-in FuSe replacement for a KxK depthwise ``nn.Conv2d``.

    Input (N, C, H, W) -> output (N, C_out, H_out, W_out) with C_out = C ("half") or 2C
    ("full"); H_out = floor((H - 1) / stride) + 1 for odd K ("same" padding).

    Parameters: ``weight_row`` (C_r, 1, 1, K), ``weight_col`` (C_c, 1, K, 1), ``bias``
    (C_out,) or None.  With "half", the first ``split`` channels (default ceil(C/2))
    take the 1xK conv and the rest the Kx1 conv; with "full" every channel takes both.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        variant: str = "half",
        split: int | None = None,
        bias: bool = False,
        activation: str | None = None,
        dilation: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = _checks.integer("channels", channels, minimum=1)
        self.kernel_size = _checks.integer("kernel_size", kernel_size, minimum=1)
        self.stride = _checks.integer("stride", stride, minimum=1)
        self.dilation = _checks.integer("dilation", dilation, minimum=1)
        self.variant = str(_checks.choice("variant", variant, VARIANTS))
        activations.canonical(activation)
        self.activation = activation
        self.c_row, self.c_col = _split_counts(channels, variant, split)
        self.out_channels = self.c_row + self.c_col
        factory = {"device": device, "dtype": dtype}
        self.weight_row = nn.Parameter(torch.empty(self.c_row, 1, 1, kernel_size, **factory))
        self.weight_col = nn.Parameter(torch.empty(self.c_col, 1, kernel_size, 1, **factory))
        self.bias = nn.Parameter(torch.empty(self.out_channels, **factory)) if bias else None
        self.reset_parameters()

    @property
    def padding(self) -> int:
        """The "same" padding along each part's conv axis."""
        return self.dilation * (self.kernel_size - 1) // 2

    def reset_parameters(self) -> None:
        # As nn.Conv2d: kaiming-uniform with a=sqrt(5) over fan_in = K (one input per group).
        bound = 1.0 / math.sqrt(self.kernel_size)
        for weight in (self.weight_row, self.weight_col):
            nn.init.uniform_(weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fuse_conv2d(
            x, self.weight_row, self.weight_col, self.bias, variant=self.variant, stride=self.stride,
            padding=self.padding, dilation=self.dilation, activation=self.activation,
        )

    def extra_repr(self) -> str:
        text = (f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"variant={self.variant!r}, split={self.c_row}/{self.c_col}")
        if self.dilation != 1:
            text += f", dilation={self.dilation}"
        if self.bias is None:
            text += ", bias=False"
        if self.activation is not None:
            text += f", activation={self.activation!r}"
        return text

    @classmethod
    def from_depthwise(cls, conv: nn.Conv2d, variant: str = "half", *, split: int | None = None,
                       activation: str | None = None) -> FuSeConv2d:
        """Build from a KxK depthwise conv, starting from its centre row and centre column.

        The row filters are ``conv.weight[:, :, K//2, :]`` and the column filters
        ``conv.weight[:, :, :, K//2]``; a bias is copied to both parts.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        k_h, k_w = conv.kernel_size
        channels = conv.in_channels
        if conv.groups != channels or conv.out_channels != channels:
            raise ValueError(
                f"conv must be depthwise (groups == in_channels == out_channels), got in={channels}, "
                f"out={conv.out_channels}, groups={conv.groups}"
            )
        if k_h != k_w or conv.stride[0] != conv.stride[1] or conv.dilation[0] != conv.dilation[1]:
            raise ValueError(
                f"conv must have a square kernel, stride and dilation, got kernel={conv.kernel_size}, "
                f"stride={conv.stride}, dilation={conv.dilation}"
            )
        same = conv.dilation[0] * (k_h - 1) // 2
        if conv.padding != (same, same) or conv.padding_mode != "zeros":
            raise ValueError(f"conv must use zero 'same' padding ({same}, {same}), got {conv.padding!r} "
                             f"with padding_mode={conv.padding_mode!r}")
        layer = cls(channels, k_h, conv.stride[0], variant=variant, split=split, bias=conv.bias is not None,
                    activation=activation, dilation=conv.dilation[0],
                    device=conv.weight.device, dtype=conv.weight.dtype)
        centre = k_h // 2
        with torch.no_grad():
            rows = conv.weight[:, :, centre : centre + 1, :]
            cols = conv.weight[:, :, :, centre : centre + 1]
            if layer.variant == "full":
                layer.weight_row.copy_(rows)
                layer.weight_col.copy_(cols)
            else:
                layer.weight_row.copy_(rows[: layer.c_row])
                layer.weight_col.copy_(cols[layer.c_row :])
            if conv.bias is not None:
                both = torch.cat([conv.bias, conv.bias]) if layer.variant == "full" else conv.bias
                layer.bias.copy_(both)
        return layer


class FuSeConvBNAct(nn.Module):
    """FuSe conv, one BatchNorm per 1-D part, then an activation (the paper's block).

    (N, C, H, W) -> (N, C_out, H_out, W_out).  In training mode it runs the conv,
    ``bn_row`` on the row channels, ``bn_col`` on the column channels, and the
    activation.  In eval mode it folds both BatchNorms into the conv's weights and a
    bias and runs the single fused kernel (conv + bias + activation in one pass).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        variant: str = "half",
        split: int | None = None,
        activation: str | None = "relu6",
        dilation: int = 1,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.conv = FuSeConv2d(channels, kernel_size, stride, variant=variant, split=split, bias=False,
                               dilation=dilation)
        self.bn_row = nn.BatchNorm2d(self.conv.c_row, eps, momentum) if self.conv.c_row else None
        self.bn_col = nn.BatchNorm2d(self.conv.c_col, eps, momentum) if self.conv.c_col else None
        activations.canonical(activation)
        self.activation = activation
        self.act = activations.module(activation)

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def folded_parameters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weight_row, weight_col, bias) with the BatchNorms' running statistics folded in."""
        scales, shifts = [], []
        for bn in (self.bn_row, self.bn_col):
            if bn is None:
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            scales.append(scale)
            shifts.append(bn.bias - bn.running_mean * scale)
        scale, shift = torch.cat(scales), torch.cat(shifts)
        c_row = self.conv.c_row
        weight_row = self.conv.weight_row * scale[:c_row].view(-1, 1, 1, 1)
        weight_col = self.conv.weight_col * scale[c_row:].view(-1, 1, 1, 1)
        return weight_row, weight_col, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            weight_row, weight_col, bias = self.folded_parameters()
            return fuse_conv2d(x, weight_row, weight_col, bias, variant=self.conv.variant,
                               stride=self.conv.stride, padding=self.conv.padding,
                               dilation=self.conv.dilation, activation=self.activation)
        return self.act(self._batch_norm(self.conv(x)))

    def _batch_norm(self, out: torch.Tensor) -> torch.Tensor:
        """``bn_row`` on the row channels and ``bn_col`` on the column channels of ``out``.

        BatchNorm is per channel, so both parts are normalised by one ``F.batch_norm``
        over all channels with their parameters and statistics side by side: under
        ``torch.compile`` the per-part form (two slices, two BatchNorms and a concatenation,
        in training and its backward) made Inductor's code for FuSe-half MobileNetV2 take
        twice the baseline's per training step (docs/benchmarks.md, "Whole networks on
        CPU").  The per-part modules are run as they are whenever they are not two plain,
        alike ``nn.BatchNorm2d`` without hooks (SyncBatchNorm, frozen or differently set up).
        """
        row, col = self.bn_row, self.bn_col
        if not _one_batch_norm_serves(row, col):
            c_row = self.conv.c_row
            parts = [bn(part) for bn, part in ((row, out[:, :c_row]), (col, out[:, c_row:])) if bn is not None]
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        # nn.BatchNorm2d.forward's logic, for both parts at once (momentum is not None here).
        updating = row.training and row.track_running_stats
        if updating:
            row.num_batches_tracked.add_(1)
            col.num_batches_tracked.add_(1)
        batch_stats = row.training or row.running_mean is None
        tracked = row.running_mean is not None and (not row.training or row.track_running_stats)
        mean = torch.cat([row.running_mean, col.running_mean]) if tracked else None
        var = torch.cat([row.running_var, col.running_var]) if tracked else None
        weight = torch.cat([row.weight, col.weight]) if row.affine else None
        bias = torch.cat([row.bias, col.bias]) if row.affine else None
        y = F.batch_norm(out, mean, var, weight, bias, batch_stats, row.momentum, row.eps)
        if batch_stats and tracked:  # F.batch_norm updated the concatenated statistics: copy them back
            k = row.num_features
            with torch.no_grad():
                row.running_mean.copy_(mean[:k])
                col.running_mean.copy_(mean[k:])
                row.running_var.copy_(var[:k])
                col.running_var.copy_(var[k:])
        return y


def _one_batch_norm_serves(row: nn.Module | None, col: nn.Module | None) -> bool:
    """Whether one F.batch_norm computes exactly what ``row`` and ``col`` would, part by part."""
    if type(row) is not nn.BatchNorm2d or type(col) is not nn.BatchNorm2d:
        return False  # a part is absent, or a subclass (SyncBatchNorm, ...) with its own forward
    if row._forward_hooks or row._forward_pre_hooks or col._forward_hooks or col._forward_pre_hooks:
        return False
    return (row.momentum is not None and row.momentum == col.momentum and row.eps == col.eps
            and row.affine == col.affine and row.track_running_stats == col.track_running_stats
            and row.training == col.training and (row.running_mean is None) == (col.running_mean is None))
