"""The block grid: the one definition of how a map is split into blocks.

Used by every backend, by the reference and by ``hwmodel``.
"""

from __future__ import annotations

from fuseops import _checks

BLOCKINGS = ("fixed", "hierarchical")
Spans = tuple[tuple[int, int], ...]


def _fixed_spans(size: int, block: int) -> Spans:
    # Blocks of `block` pixels; the last one is smaller when `block` does not divide.
    return tuple((start, min(start + block, size)) for start in range(0, size, block))


def _hierarchical_spans(size: int, count: int, dim: str) -> Spans:
    if count > size:
        raise ValueError(f"block_size asks for {count} blocks along {dim}, but the map has only {size} pixels")
    # Block i spans [floor(i*size/count), floor((i+1)*size/count)): sizes differ by at most one.
    return tuple(((i * size) // count, ((i + 1) * size) // count) for i in range(count))


def block_grid(
    height: int, width: int, block_size: int | tuple[int, int], blocking: str = "fixed"
) -> tuple[Spans, Spans]:
    """Block boundaries along H and W.

    Args:
        height, width: the map's size (>= 1).
        block_size: with ``blocking="fixed"``, the block's size in pixels (bh, bw) (an
            int means square); a size that does not divide leaves a smaller last block,
            and a size at least as large as the map means one block.  With
            ``blocking="hierarchical"``, the number of blocks (nh, nw) per map.
        blocking: "fixed" or "hierarchical".

    Returns:
        ``(rows, cols)``: tuples of ``(start, stop)`` spans covering [0, height) and
        [0, width) in order.
    """
    height = _checks.integer("height", height, minimum=1)
    width = _checks.integer("width", width, minimum=1)
    size_h, size_w = _checks.pair("block_size", block_size, minimum=1)
    if not isinstance(blocking, str):
        raise TypeError(f"blocking must be a str, got {type(blocking).__name__}")
    _checks.choice("blocking", blocking, BLOCKINGS)
    if blocking == "fixed":
        return _fixed_spans(height, size_h), _fixed_spans(width, size_w)
    return _hierarchical_spans(height, size_h, "H"), _hierarchical_spans(width, size_w, "W")


def spans_to_bounds(spans: Spans) -> list[int]:
    """[(0, a), (a, b), (b, n)] -> [0, a, b, n]: the form the ops' schemas take."""
    return [spans[0][0]] + [stop for _, stop in spans]


def bounds_to_spans(bounds: list[int]) -> Spans:
    return tuple((bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1))


def block_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Outputs of one block of ``size`` pixels padded by ``padding`` on each side."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
