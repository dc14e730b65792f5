"""The layer IR every hardware model reads: one record per compute layer."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Kinds of compute layer.  "fuse_row" is a 1xK depthwise conv, "fuse_col" a Kx1 one.
KINDS = ("conv", "depthwise", "fuse_row", "fuse_col", "linear")


def conv_kind(groups: int, in_channels: int, kernel_h: int, kernel_w: int) -> str:
    """The kind of a 2-D conv: depthwise ones are "fuse_row" (1xK), "fuse_col" (Kx1) or
    "depthwise"; every other conv (dense, grouped) is "conv"."""
    if groups > 1 and groups == in_channels:
        if kernel_h == 1 and kernel_w > 1:
            return "fuse_row"
        if kernel_w == 1 and kernel_h > 1:
            return "fuse_col"
        return "depthwise"
    return "conv"


@dataclass(frozen=True)
class Layer:
    """One compute layer, with the unpadded input size.

    A linear layer is ``kind="linear"`` with ``in_h = in_w = 1``, kernel 1x1,
    ``in_channels = in_features`` and ``out_channels = out_features``.  ``batch`` counts
    the independent input rows (N, or N times the tokens of a linear layer applied per
    position).  Block convolutions carry their grid in ``block_rows`` / ``block_cols``:
    the [start, stop) spans of the blocks along H and W (from ``fuseops.block_grid``),
    each block padded by (pad_h, pad_w) on its own.  ``None`` means unblocked.
    """

    name: str
    kind: str
    batch: int
    in_channels: int
    in_h: int
    in_w: int
    out_channels: int
    kernel_h: int = 1
    kernel_w: int = 1
    stride_h: int = 1
    stride_w: int = 1
    pad_h: int = 0
    pad_w: int = 0
    dilation_h: int = 1
    dilation_w: int = 1
    groups: int = 1
    block_rows: tuple[tuple[int, int], ...] | None = None
    block_cols: tuple[tuple[int, int], ...] | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("batch", "in_channels", "in_h", "in_w", "out_channels", "kernel_h", "kernel_w",
                     "stride_h", "stride_w", "dilation_h", "dilation_w", "groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"Layer.{name} must be >= 1, got {getattr(self, name)}")
        if self.pad_h < 0 or self.pad_w < 0:
            raise ValueError(f"Layer padding must be >= 0, got ({self.pad_h}, {self.pad_w})")

    @staticmethod
    def _out(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
        return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1

    def _out_dim(self, spans, size, kernel, stride, pad, dilation) -> int:
        if spans is None:
            return self._out(size, kernel, stride, pad, dilation)
        return sum(self._out(stop - start, kernel, stride, pad, dilation) for start, stop in spans)

    @property
    def out_h(self) -> int:
        return self._out_dim(self.block_rows, self.in_h, self.kernel_h, self.stride_h, self.pad_h,
                             self.dilation_h)

    @property
    def out_w(self) -> int:
        return self._out_dim(self.block_cols, self.in_w, self.kernel_w, self.stride_w, self.pad_w,
                             self.dilation_w)

    @property
    def macs(self) -> int:
        """Multiply-accumulates: each output element costs (in_channels/groups)*kh*kw."""
        per_output = (self.in_channels // self.groups) * self.kernel_h * self.kernel_w
        return self.batch * self.out_channels * self.out_h * self.out_w * per_output

    @property
    def params(self) -> int:
        """Weight count (no bias)."""
        return self.out_channels * (self.in_channels // self.groups) * self.kernel_h * self.kernel_w


@dataclass(frozen=True)
class Unsupported:
    """A module or layer that a hardware model cannot cost, and why.  Models list these
    next to their totals rather than dropping them."""

    name: str
    type_name: str
    reason: str
