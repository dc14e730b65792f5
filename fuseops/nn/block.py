"""Block convolution layer."""

from __future__ import annotations

import torch
from torch import nn

from fuseops import _checks
from fuseops.block_conv import BLOCKINGS, PADDING_MODES, STRIDE_MODES, block_conv2d

# nn.Conv2d's padding_mode names -> block padding modes.
_FROM_CONV_MODE = {"zeros": "constant", "replicate": "replicate", "reflect": "reflect"}


class BlockConv2d(nn.Conv2d):
    """Drop-in ``nn.Conv2d`` that convolves each spatial block on its own.

    Same constructor arguments, attributes and state_dict keys (``weight``, ``bias``)
    as ``nn.Conv2d``, plus the blocking: ``block_size``, ``blocking`` ("fixed": block
    pixels; "hierarchical": blocks per map), ``stride_mode`` ("conv" or "pool"), and
    ``padding_mode``, which here means how each *block* is padded: "constant",
    "replicate" or "reflect".

    (N, C_in, H, W) -> (N, C_out, H_out, W_out); see :func:`fuseops.block_conv2d`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        block_size: int | tuple[int, int],
        padding_mode: str = "constant",
        blocking: str = "fixed",
        stride_mode: str = "conv",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if isinstance(padding, str):
            raise ValueError(f"padding must be an int or a pair of ints for BlockConv2d, got {padding!r}")
        _checks.choice("padding_mode", padding_mode, PADDING_MODES)
        _checks.choice("blocking", blocking, BLOCKINGS)
        _checks.choice("stride_mode", stride_mode, STRIDE_MODES)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode="zeros", device=device, dtype=dtype)
        self.block_size = _checks.pair("block_size", block_size, minimum=1)
        # Overrides nn.Conv2d's attribute: the mode pads each block, not the map.
        self.padding_mode = padding_mode
        self.blocking = blocking
        self.stride_mode = stride_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return block_conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
            block_size=self.block_size, padding_mode=self.padding_mode, blocking=self.blocking,
            stride_mode=self.stride_mode,
        )

    def extra_repr(self) -> str:
        # nn.Conv2d's repr would print our block padding mode as if it padded the map.
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        grid = "x".join(str(v) for v in self.block_size)
        text += f", block_size={grid} ({self.blocking}), block_padding={self.padding_mode!r}"
        if self.stride_mode != "conv":
            text += f", stride_mode={self.stride_mode!r}"
        return text

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        block_size: int | tuple[int, int],
        *,
        padding_mode: str | None = None,
        blocking: str = "fixed",
        stride_mode: str = "conv",
    ) -> BlockConv2d:
        """A BlockConv2d with ``conv``'s configuration and (shared-by-copy) weights.

        ``padding_mode`` defaults to the conv's own ("zeros" -> "constant").
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if isinstance(conv.padding, str):
            raise ValueError(f"conv.padding={conv.padding!r} is a string; give it explicit integer padding first")
        if padding_mode is None:
            if conv.padding_mode not in _FROM_CONV_MODE:
                raise ValueError(f"conv.padding_mode={conv.padding_mode!r} has no block equivalent; "
                                 f"pass padding_mode= one of {PADDING_MODES}")
            padding_mode = _FROM_CONV_MODE[conv.padding_mode]
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, block_size=block_size,
                    padding_mode=padding_mode, blocking=blocking, stride_mode=stride_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer
