"""Block padding as one gather: the building block of the CUDA block-conv path (option A).

Every block of a blocking is padded on its own (constant, replicate or reflect, taking
values only from that block) and the padded blocks are laid side by side, in grid
order, on one "canvas".  A convolution with padding 0 over the canvas then computes
every block's output in one cuDNN call; rows/columns of the output that straddle two
blocks are discarded afterwards.  With ``align = stride`` every padded block starts at
a canvas offset divisible by the stride, so the strided outputs line up with blocks.

Spans describe a blocking along one axis as ``(start, size)`` pairs, e.g. a 30-pixel
axis with blocks of 14: ``((0, 14), (14, 14), (28, 2))`` (the last block is ragged).

Kernels: ``torch.ops.fuseops_ext.block_pad_gather`` / ``block_pad_scatter`` (C++ on
CPU, CUDA on GPU; schemas in ``csrc/block_pad_schema.cpp``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

MODES = ("constant", "replicate", "reflect")

Spans = Sequence[tuple[int, int]]


def fixed_spans(extent: int, block: int) -> tuple[tuple[int, int], ...]:
    """Blocks of ``block`` pixels from the start; the last one is ragged when it does not divide."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    return tuple((start, min(block, extent - start)) for start in range(0, extent, block))


def flat(spans: Spans) -> list[int]:
    """The schema's flat ``[start0, size0, start1, size1, ...]`` form."""
    return [int(v) for span in spans for v in span]


def canvas_length(spans: Spans, pad_lo: int, pad_hi: int, align: int = 1) -> int:
    return sum(-(-(size + pad_lo + pad_hi) // align) * align for _, size in spans)


def block_pad_reference(
    x: torch.Tensor,
    row_spans: Spans,
    col_spans: Spans,
    padding: tuple[int, int, int, int],
    mode: str,
    align: int = 1,
) -> torch.Tensor:
    """The definition, block by block with ``F.pad``.

    x: (N, C, H, W); padding: (top, bottom, left, right).
    Returns (N, C, H_canvas, W_canvas) with H_canvas = canvas_length(row_spans, top, bottom, align).
    """
    top, bottom, left, right = padding
    rows = []
    for r0, rh in row_spans:
        cols = []
        for c0, cw in col_spans:
            block = x[:, :, r0 : r0 + rh, c0 : c0 + cw]
            padded = F.pad(block, (left, right, top, bottom), mode=mode)
            # Alignment filler (zeros) after the padded block.
            extra_h = -(-padded.shape[2] // align) * align - padded.shape[2]
            extra_w = -(-padded.shape[3] // align) * align - padded.shape[3]
            cols.append(F.pad(padded, (0, extra_w, 0, extra_h)))
        rows.append(torch.cat(cols, dim=3))
    return torch.cat(rows, dim=2)


def block_pad(
    x: torch.Tensor,
    row_spans: Spans,
    col_spans: Spans,
    padding: tuple[int, int, int, int],
    mode: str,
    align: int = 1,
) -> torch.Tensor:
    """The same as :func:`block_pad_reference` in one kernel pass (differentiable).

    Raises RuntimeError from the kernel (TORCH_CHECK) on spans outside the input,
    reflect padding not smaller than a block, or an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    gather = torch.ops.fuseops_ext.block_pad_gather
    return gather(x, flat(row_spans), flat(col_spans), list(padding), mode, align)


def _setup_context(ctx, inputs, output):
    x, row_spans, col_spans, padding, mode, align = inputs
    ctx.config = (row_spans, col_spans, padding, mode, align, x.shape[2], x.shape[3])


def _backward(ctx, grad):
    row_spans, col_spans, padding, mode, align, height, width = ctx.config
    scatter = torch.ops.fuseops_ext.block_pad_scatter
    grad_x = scatter(grad, row_spans, col_spans, padding, mode, align, height, width)
    return grad_x, None, None, None, None, None


def _pairs(spans: Sequence[int]) -> list[tuple[int, int]]:
    return [(spans[i], spans[i + 1]) for i in range(0, len(spans), 2)]


def _fake_gather(x, row_spans, col_spans, padding, mode, align):
    top, bottom, left, right = padding
    height = canvas_length(_pairs(row_spans), top, bottom, align)
    width = canvas_length(_pairs(col_spans), left, right, align)
    return x.new_empty((x.shape[0], x.shape[1], height, width))


def _fake_scatter(grad, row_spans, col_spans, padding, mode, align, height, width):
    return grad.new_empty((grad.shape[0], grad.shape[1], height, width))


def _register_python_parts() -> None:
    """Autograd and fake (meta) implementations for the C++-defined ops, once they exist."""
    from fuseops._extension import has_kernel

    ok, _ = has_kernel("block_pad_gather")
    if ok:
        torch.library.register_fake("fuseops_ext::block_pad_gather", _fake_gather)
        torch.library.register_fake("fuseops_ext::block_pad_scatter", _fake_scatter)
        torch.library.register_autograd(
            "fuseops_ext::block_pad_gather", _backward, setup_context=_setup_context
        )


_register_python_parts()
