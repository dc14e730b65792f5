"""block_conv2d under torch.compile: in inference graphs on grids of equal blocks it is
written as standard ops (fuseops/block_conv/compiled.py); everywhere else the graph calls
the op.  Both must give the reference's answer."""

from __future__ import annotations

import pytest
import torch

import fuseops
from fuseops.block_conv.grid import block_grid, spans_to_bounds
from fuseops.block_conv.reference import block_conv2d_reference
from fuseops.models import get_model

MODES = ("constant", "replicate", "reflect")


def _graph_ops(fn, *args) -> tuple[list[str], torch.Tensor]:
    """The targets of the FX graph Dynamo hands its backend, and the compiled result."""
    seen: list[str] = []
    torch._dynamo.reset()  # every test's fn has the same code: no recompile limit across tests

    def backend(gm, example_inputs):
        seen.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    out = torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return seen, out


def _want(x, w, b, stride, padding, dilation, groups, block, mode):
    rows, cols = block_grid(x.shape[2], x.shape[3], block, "fixed")
    return block_conv2d_reference(x, w, b, list(stride), list(padding), list(dilation), groups,
                                  spans_to_bounds(rows), spans_to_bounds(cols), mode)


# (x shape, weight shape, stride, padding, dilation, groups, block): several blocks, one
# block, strides, dilation, grouped and depthwise, non-square blocks.
CASES = [
    ((2, 3, 12, 12), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1, (6, 6)),
    ((2, 4, 12, 8), (4, 2, 3, 3), (2, 2), (1, 1), (1, 1), 2, (6, 4)),
    ((1, 3, 10, 10), (5, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1, (10, 10)),
    ((2, 6, 16, 16), (6, 1, 5, 5), (1, 1), (2, 2), (1, 1), 6, (8, 8)),
    ((1, 2, 18, 12), (3, 2, 3, 3), (1, 1), (2, 2), (2, 2), 1, (9, 6)),
    ((1, 3, 16, 16), (4, 3, 7, 7), (2, 2), (3, 3), (1, 1), 1, (8, 8)),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"x{c[0]}_w{c[1]}_s{c[2][0]}_b{c[6]}")
def test_inference_graph_on_equal_blocks_has_no_op_and_gives_the_reference(case, mode):
    shape, w_shape, stride, padding, dilation, groups, block = case
    x = torch.randn(shape, dtype=torch.float64)
    w, b = torch.randn(w_shape, dtype=torch.float64), torch.randn(w_shape[0], dtype=torch.float64)

    def fn(x, w, b):
        return fuseops.block_conv2d(x, w, b, stride, padding, dilation, groups, block_size=block, padding_mode=mode)

    with torch.no_grad():
        ops, got = _graph_ops(fn, x, w, b)
    assert not any("fuseops" in op for op in ops), ops
    assert any("conv2d" in op for op in ops), ops
    torch.testing.assert_close(got, _want(x, w, b, stride, padding, dilation, groups, block, mode),
                               rtol=1e-12, atol=1e-12)


def test_ragged_grids_and_graphs_with_gradients_keep_the_op():
    x = torch.randn(1, 3, 11, 9, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)

    def fn(x, w):
        return fuseops.block_conv2d(x, w, None, 1, 1, block_size=(5, 4), padding_mode="replicate")

    with torch.no_grad():
        ops, got = _graph_ops(fn, x, w)  # blocks of 5, 5, 1 rows: not equal
    assert any("fuseops.block_conv2d" in op for op in ops), ops
    torch.testing.assert_close(got, _want(x, w, None, (1, 1), (1, 1), (1, 1), 1, (5, 4), "replicate"))

    x = torch.randn(1, 3, 10, 8, dtype=torch.float64, requires_grad=True)

    def equal_blocks(x, w):
        return fuseops.block_conv2d(x, w, None, 1, 1, block_size=(5, 4), padding_mode="replicate")

    ops, got = _graph_ops(equal_blocks, x, w)
    assert any("fuseops.block_conv2d" in op for op in ops), ops
    (grad,) = torch.autograd.grad(got.sum(), x)
    x_ref = x.detach().requires_grad_()
    (want,) = torch.autograd.grad(_want(x_ref, w, None, (1, 1), (1, 1), (1, 1), 1, (5, 4), "replicate").sum(),
                                  x_ref)
    torch.testing.assert_close(grad, want)


def test_inductor_compiled_block_resnet18_gives_the_eager_answer():
    model = get_model("resnet18", variant="block", block_size=28, blocking="fixed", num_classes=10).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        want = model(x)
        ops, _ = _graph_ops(model, x)
        got = torch.compile(model, fullgraph=True)(x)
    # 112 -> stem on 4x4 blocks of 28, then maps of 28 and less: every conv composes.
    assert not any("fuseops" in op for op in ops), ops
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
