"""convention="scalesim" against the real SCALE-Sim 3.0.0 (PyPI), cycle for cycle.

SCALE-Sim runs in a venv of its own (numpy < 2.4; see hwmodel/scalesim.py), created on
first use under ~/.cache/fuseops/scalesim-venv and reused afterwards.  Creating it needs
pip access to PyPI: without it this module skips locally and FAILS under CI=true.

What is compared: COMPUTE_REPORT.csv's "Total Cycles" column (compute cycles; the
"(incl. prefetch)" column adds SRAM prefetch and is not modelled), for every layer, with
the SCALE-Sim rows of a depthwise layer (one per channel) and of a grouped conv (one per
group) summed.  The SRAMs are large and the bandwidth mode is CALC, so SCALE-Sim reports
no stall cycles; the test checks that too, since a stall would be memory time the
formulas do not model.  Agreement is exact: no mismatch is tolerated or expected.

One SCALE-Sim rule the model follows on purpose: the output size of a pre-padded map is
ceil((H - R + s) / s), one more than PyTorch's when s does not divide H - R (the
"strided_ragged" layer below covers it).
"""

from __future__ import annotations

import pytest

from hwmodel import Layer, SystolicArray, read_topology, write_topology
from hwmodel.scalesim import run_scalesim
from hwmodel.topology import topology_rows

ARRAYS = ((4, 6), (8, 8), (16, 5))  # non-square both ways, and taller than some layers' folds
DATAFLOWS = ("os", "ws", "is")

# Small layers so that SCALE-Sim's cycle-by-cycle simulation stays quick.  Padding is
# given unpadded + pad, so write_topology's folding of padding into the IFMAP is tested.
LAYERS = (
    Layer("dense", "conv", 1, 5, 10, 8, 7, kernel_h=3, kernel_w=3, pad_h=1, pad_w=1),
    Layer("strided", "conv", 1, 4, 11, 9, 9, kernel_h=3, kernel_w=3, stride_h=2, stride_w=2, pad_h=1,
          pad_w=1),
    # stride 3 > kernel 2, and (10 - 2) % 3 != 0: SCALE-Sim's ceil output size differs from PyTorch's
    Layer("strided_ragged", "conv", 1, 3, 10, 10, 6, kernel_h=2, kernel_w=2, stride_h=3, stride_w=3),
    Layer("pointwise", "conv", 1, 10, 7, 7, 13),
    Layer("linear", "linear", 1, 37, 1, 1, 11),
    Layer("linear_batch5", "linear", 5, 19, 1, 1, 8),
    Layer("grouped", "conv", 1, 6, 6, 6, 4, kernel_h=3, kernel_w=3, pad_h=1, pad_w=1, groups=2),
    Layer("row_1x3", "fuse_row", 1, 3, 6, 9, 3, kernel_h=1, kernel_w=3, pad_w=1, groups=3),
    Layer("col_5x1", "fuse_col", 1, 3, 9, 6, 3, kernel_h=5, kernel_w=1, pad_h=2, groups=3),
    Layer("dw_3x3_s2", "depthwise", 1, 4, 9, 9, 4, kernel_h=3, kernel_w=3, stride_h=2, stride_w=2,
          pad_h=1, pad_w=1, groups=4),
)


@pytest.fixture(scope="module")
def scalesim_runs(scalesim_python, tmp_path_factory):
    topology = tmp_path_factory.mktemp("scalesim") / "layers.csv"
    write_topology(LAYERS, topology)
    configs = [(r, c, df) for r, c in ARRAYS for df in DATAFLOWS]
    return topology, run_scalesim(topology, configs, python=scalesim_python)


def _scalesim_rows_per_layer() -> list[int]:
    """How many SCALE-Sim report rows each layer becomes: one per topology row, and one
    per channel for the depthwise ("DP") rows."""
    counts = []
    for layer in LAYERS:
        rows = topology_rows(layer)
        counts.append(sum(row[5] if "DP" in row[0] else 1 for row in rows))
    return counts


def test_scalesim_reports_no_stalls(scalesim_runs):
    _, runs = scalesim_runs
    for run in runs:
        assert set(run.stall_cycles) == {0}, (run.rows, run.cols, run.dataflow, run.stall_cycles)


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a[0]}x{a[1]}")
def test_every_layer_matches_scalesim_exactly(scalesim_runs, array, dataflow):
    _, runs = scalesim_runs
    run = next(r for r in runs if (r.rows, r.cols, r.dataflow) == (*array, dataflow))
    counts = _scalesim_rows_per_layer()
    assert len(run.total_cycles) == sum(counts), "SCALE-Sim expanded the topology differently"
    theirs, start = [], 0
    for count in counts:
        theirs.append(sum(run.total_cycles[start:start + count]))
        start += count
    est = SystolicArray(*array, dataflow=dataflow, convention="scalesim").estimate(list(LAYERS))
    names = [layer.name for layer in LAYERS]
    assert dict(zip(names, [c.cycles for c in est.layers])) == dict(zip(names, theirs))
    assert est.total_cycles == sum(run.total_cycles)


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_topology_read_back_gives_the_same_cycles(scalesim_runs, dataflow):
    topology, runs = scalesim_runs
    layers = read_topology(topology)
    for rows, cols in ARRAYS:
        run = next(r for r in runs if (r.rows, r.cols, r.dataflow) == (rows, cols, dataflow))
        est = SystolicArray(rows, cols, dataflow=dataflow, convention="scalesim").estimate(layers)
        assert est.total_cycles == sum(run.total_cycles)
