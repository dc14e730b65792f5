"""Block padding as one gather onto a "canvas": the CUDA block-conv path, option A.

Every block of a blocking is padded on its own (constant, replicate or reflect, with
values only from that block) and the padded blocks are laid side by side, in grid
order, on one canvas.  A convolution with padding 0 over the canvas then computes
every block's outputs in one cuDNN call; output rows/columns that straddle two blocks
are dropped afterwards.  With ``align = stride`` each padded block starts at a canvas
offset divisible by the stride, so the strided outputs line up with the blocks.

Blockings are the ``(start, stop)`` spans of :func:`fuseops.block_conv.grid.block_grid`
(ragged last blocks included).  Unlike ``block_conv.reference.block_pad_reference``
(batched blocks, evenly divisible maps only), the canvas handles ragged blocks.

Kernels: ``torch.ops.fuseops_ext.block_pad_gather`` / ``block_pad_scatter`` (C++ on
CPU, CUDA on GPU; schemas in ``csrc/block_pad_schema.cpp``, taking the spans as bounds).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fuseops.block_conv.grid import Spans, bounds_to_spans, spans_to_bounds

MODES = ("constant", "replicate", "reflect")


def canvas_length(spans: Spans, pad_lo: int, pad_hi: int, align: int = 1) -> int:
    """Canvas size along one axis: each padded block rounded up to a multiple of ``align``."""
    return sum(-(-(stop - start + pad_lo + pad_hi) // align) * align for start, stop in spans)


def block_pad_canvas_reference(
    x: torch.Tensor, rows: Spans, cols: Spans, padding: tuple[int, int, int, int], mode: str, align: int = 1
) -> torch.Tensor:
    """The definition, block by block with ``F.pad``.

    x: (N, C, H, W); rows/cols: (start, stop) spans; padding: (top, bottom, left, right).
    Returns (N, C, canvas_length(rows, top, bottom, align), canvas_length(cols, left, right, align)).
    """
    top, bottom, left, right = padding
    canvas_rows = []
    for r0, r1 in rows:
        canvas_cols = []
        for c0, c1 in cols:
            padded = F.pad(x[:, :, r0:r1, c0:c1], (left, right, top, bottom), mode=mode)
            # Alignment filler (zeros) after the padded block.
            extra_h = -(-padded.shape[2] // align) * align - padded.shape[2]
            extra_w = -(-padded.shape[3] // align) * align - padded.shape[3]
            canvas_cols.append(F.pad(padded, (0, extra_w, 0, extra_h)))
        canvas_rows.append(torch.cat(canvas_cols, dim=3))
    return torch.cat(canvas_rows, dim=2)


def block_pad_canvas(
    x: torch.Tensor, rows: Spans, cols: Spans, padding: tuple[int, int, int, int], mode: str, align: int = 1
) -> torch.Tensor:
    """The same as :func:`block_pad_canvas_reference`, in one kernel pass; differentiable
    (the backward is one deterministic pass too).  The kernel raises RuntimeError
    (TORCH_CHECK) on spans outside x or reflect padding not smaller than a block.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    gather = torch.ops.fuseops_ext.block_pad_gather
    return gather(x, spans_to_bounds(rows), spans_to_bounds(cols), list(padding), mode, align)


def _setup_context(ctx, inputs, output):
    x, row_bounds, col_bounds, padding, mode, align = inputs
    ctx.config = (row_bounds, col_bounds, padding, mode, align, x.shape[2], x.shape[3])


def _backward(ctx, grad):
    scatter = torch.ops.fuseops_ext.block_pad_scatter
    return scatter(grad, *ctx.config), None, None, None, None, None


def _fake_gather(x, row_bounds, col_bounds, padding, mode, align):
    top, bottom, left, right = padding
    height = canvas_length(bounds_to_spans(row_bounds), top, bottom, align)
    width = canvas_length(bounds_to_spans(col_bounds), left, right, align)
    return x.new_empty((x.shape[0], x.shape[1], height, width))


def _fake_scatter(grad, row_bounds, col_bounds, padding, mode, align, height, width):
    return grad.new_empty((grad.shape[0], grad.shape[1], height, width))


def _register_python_parts() -> None:
    """Fake (meta) implementations and autograd for the C++-defined ops, once built."""
    from fuseops._extension import has_kernel

    ok, _ = has_kernel("block_pad_gather")
    if ok:
        torch.library.register_fake("fuseops_ext::block_pad_gather", _fake_gather)
        torch.library.register_fake("fuseops_ext::block_pad_scatter", _fake_scatter)
        torch.library.register_autograd(
            "fuseops_ext::block_pad_gather", _backward, setup_context=_setup_context
        )


_register_python_parts()
