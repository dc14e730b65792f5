"""The ``hwmodel`` console script: ``systolic``, ``speedup`` and ``fpga``.

The model zoo (fuseops.models) is replaced by a small stand-in built from
tests/hwmodel_nets.py, so the zoo code paths run whether or not the zoo has landed.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from types import SimpleNamespace

import pytest
from hwmodel_nets import mobilenet_v2

from fuseops.cli import hwmodel as cli
from hwmodel import speedup
from hwmodel.fpga.networks import vgg16

HEADER = ("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, "
          "Strides,\n")
VARIANT_TO_FUSE = {"baseline": None, "half": "half", "full": "full"}
SHAPE = (1, 3, 32, 32)


def _get_model(name, *, variant="baseline"):
    if name not in ("net_a", "net_b"):
        raise ValueError(f"unknown model {name!r}")
    if variant not in VARIANT_TO_FUSE:
        raise ValueError(f"unknown variant {variant!r}")
    width = 0.25 if name == "net_a" else 0.5
    return mobilenet_v2(fuse=VARIANT_TO_FUSE[variant], width=width, num_classes=10)


@pytest.fixture
def fake_zoo(monkeypatch):
    zoo = SimpleNamespace(list_models=lambda: ["net_a", "net_b"], get_model=_get_model)
    monkeypatch.setattr(cli, "zoo", lambda: zoo)
    return zoo


@pytest.fixture
def topology(tmp_path):
    # 3x3 conv, C=2 -> M=3 on a 5x5 map padded to 7x7: P=25, T=18.
    path = tmp_path / "net.csv"
    path.write_text(HEADER + "dense, 7, 7, 3, 3, 2, 3, 1,\n")
    return path


def test_systolic_on_a_topology_csv(topology, tmp_path, capsys):
    out_csv = tmp_path / "rows.csv"
    code = cli.main(["systolic", str(topology), "--array", "4x2", "--per-layer", "--csv", str(out_csv)])
    assert code == 0
    text = capsys.readouterr().out
    # the paper's model on 4x2: P = 6*4 + 1, M = 1*2 + 1
    expected = 6 * 1 * (18 + 4 + 2 - 1) + 1 * (18 + 1 + 2 - 1) + 6 * (18 + 4 + 1 - 1) + (18 + 1 + 1 - 1)
    assert f"{expected:,}" in text
    assert "dense" in text
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["name"], int(r["cycles"])) for r in rows] == [("dense", expected)]


def test_systolic_scalesim_convention_and_dataflow(topology, capsys):
    assert cli.main(["systolic", str(topology), "--array", "4x2", "--convention", "scalesim",
                     "--dataflow", "is"]) == 0
    expected = 5 * 13 * (2 * 4 + 2 + 3 - 2) - 1  # ceil(18/4) * ceil(25/2) * (2X + Y + M - 2) - 1
    assert f"{expected:,}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--array", "64by64"], "--array must look like 64x64"),
        (["--array", "0x8"], "positive sizes"),
        (["--input-shape", "1,3,a"], "--input-shape must be a comma-separated list"),
    ],
)
def test_systolic_bad_options(topology, capsys, argv, message):
    assert cli.main(["systolic", str(topology), *argv]) == 2
    assert message in capsys.readouterr().err


def test_systolic_bad_csv_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "dense, 7, seven, 3, 3, 2, 3, 1,\n")
    assert cli.main(["systolic", str(bad)]) == 2
    assert "line 2, column 3 (IFMAP Width)" in capsys.readouterr().err
    assert cli.main(["systolic", str(tmp_path / "nope.csv")]) == 2
    assert "topology file not found" in capsys.readouterr().err


def test_unknown_dataflow_is_rejected_by_argparse(topology):
    with pytest.raises(SystemExit) as exc:
        cli.main(["systolic", str(topology), "--dataflow", "rs"])
    assert exc.value.code == 2


def test_systolic_on_a_zoo_model(fake_zoo, capsys):
    shape = ",".join(map(str, SHAPE))
    assert cli.main(["systolic", "net_a", "--variant", "half", "--input-shape", shape, "--per-layer"]) == 0
    text = capsys.readouterr().out
    assert "FuSe array" in text and "fuse_row" in text
    assert cli.main(["systolic", "net_a", "--input-shape", shape]) == 0
    assert "plain array" in capsys.readouterr().out
    assert cli.main(["systolic", "resnet9000"]) == 2
    assert "unknown model 'resnet9000'" in capsys.readouterr().err
    assert cli.main(["systolic", "net_a", "--variant", "quarter"]) == 2
    assert "unknown variant" in capsys.readouterr().err


def test_speedup_sweep_table_csv_and_plot(fake_zoo, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["speedup", "--networks", "net_a,net_b", "--variants", "half,full", "--arrays", "8,32",
                     "--input-shape", ",".join(map(str, SHAPE)), "--out-dir", str(out), "--markdown"])
    assert code == 0
    text = capsys.readouterr().out
    assert "| network | variant | 8x8 | 32x32 |" in text
    rows = list(csv.DictReader((out / "systolic_speedup.csv").open()))
    assert len(rows) == 2 * 2 * 2
    for row in rows:
        base = _get_model(row["network"])
        fuse = _get_model(row["network"], variant=row["variant"])
        size = int(row["array"])
        expected = speedup(base, fuse, array=(size, size), input_shape=SHAPE)
        assert float(row["speedup"]) == pytest.approx(expected)
        assert float(row["speedup"]) == pytest.approx(int(row["baseline_cycles"]) / int(row["fuse_cycles"]))
    assert (out / "systolic_speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_speedup_bad_options(fake_zoo, capsys):
    assert cli.main(["speedup", "--arrays", "8,zero"]) == 2
    assert "--arrays must be a comma-separated list" in capsys.readouterr().err
    assert cli.main(["speedup", "--networks", "net_a", "--variants", "half_hybrid", "--arrays", "8",
                     "--no-plot"]) == 2
    assert "cannot build net_a with variant 'half_hybrid'" in capsys.readouterr().err


def test_console_entry_point_help():
    done = subprocess.run([sys.executable, "-m", "fuseops.cli.hwmodel", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    assert all(command in done.stdout for command in ("systolic", "speedup", "fpga"))


def test_zoo_mobilenet_v2_costs_as_the_test_built_one(capsys):
    # The real zoo: its MobileNetV2 must cost exactly what the independently built one of
    # tests/hwmodel_nets.py costs, and the CLI must run on it.
    from fuseops import models
    from hwmodel import SystolicArray

    shape = (1, 3, 224, 224)
    for variant, fuse in (("baseline", None), ("half", "half"), ("full", "full")):
        array = SystolicArray(64, 64, fuse=fuse is not None)
        zoo_cycles = array.estimate(models.get_model("mobilenet_v2", variant=variant), shape).total_cycles
        assert zoo_cycles == array.estimate(mobilenet_v2(fuse=fuse), shape).total_cycles, variant
    assert cli.main(["systolic", "mobilenet_v2", "--variant", "half"]) == 0
    assert "FuSe array" in capsys.readouterr().out


# ---------------------------------------------------------------------------- hwmodel fpga

def test_cli_report_prints_tables_and_writes_the_chart(tmp_path, capsys, monkeypatch):
    from fuseops.cli.hwmodel import fpga as cli

    monkeypatch.setenv("COLUMNS", "300")  # rich would wrap cells at 80 columns

    plot = tmp_path / "traffic.png"
    args = cli._configure(__import__("argparse").ArgumentParser()).parse_args(
        ["vgg16", "--plot", str(plot), "--schedule", "block-fused"])
    assert cli.report(vgg16(28, classifier=False), args) == 0
    out = capsys.readouterr().out
    assert "block-fused" in out and "tiled-fused" in out and "conv5_3" in out
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    plain = cli._configure(__import__("argparse").ArgumentParser()).parse_args(["vgg16", "--no-plot"])
    from fuseops.cli.hwmodel import CliError

    with pytest.raises(CliError, match="no block convs"):
        cli.report(vgg16(classifier=False), plain)


def test_cli_help_and_mounting():
    import argparse

    from fuseops.cli.hwmodel import fpga as cli

    parser = argparse.ArgumentParser(prog="hwmodel")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["fpga", "resnet18", "--device", "zcu102", "--bits", "8"])
    assert (args.model, args.device, args.bits, args.func) == ("resnet18", "zcu102", 8, cli.run)
    from fuseops.cli import hwmodel as hw

    with pytest.raises(SystemExit) as exc:
        hw.main(["fpga", "--help"])
    assert exc.value.code == 0
    with pytest.raises(SystemExit):
        hw.main(["fpga", "vgg16", "--bits", "12"])


def test_hwmodel_fpga_command_end_to_end(monkeypatch, capsys, tmp_path):
    """``hwmodel fpga MODEL`` through fuseops.cli.hwmodel: zoo -> trace -> estimate -> tables and PNG."""
    import types

    import torch.nn as nn

    from fuseops.cli import hwmodel as hw
    from fuseops.nn import BlockConv2d

    def get_model(name, variant="baseline", block_size=28, blocking="fixed"):
        assert (name, variant, block_size, blocking) == ("tiny", "block", 8, "fixed")
        return nn.Sequential(BlockConv2d(3, 8, 3, padding=1, block_size=block_size, blocking=blocking), nn.ReLU(),
                             nn.MaxPool2d(2), BlockConv2d(8, 8, 3, padding=1, block_size=block_size, blocking=blocking))

    fake = types.SimpleNamespace(list_models=lambda: {"tiny": ("block",)}, get_model=get_model)
    monkeypatch.setattr(hw, "zoo", lambda: fake)
    monkeypatch.setenv("COLUMNS", "300")
    plot = tmp_path / "t.png"
    assert hw.main(["fpga", "tiny", "--block-size", "8", "--input-size", "32", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "block-fused" in out and plot.exists()
    assert "Assumptions:\n- one Tm=" in out and "DRAM sustains 12.8 GB/s peak x 0.8" in out  # the zc706 preset
    assert hw.main(["fpga", "nope", "--no-plot"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert hw.main(["fpga", "tiny", "--block-size", "8", "--input-size", "32", "--bits", "32", "--tm", "64",
                    "--tn", "7", "--no-plot"]) == 2
    assert "DSP" in capsys.readouterr().err


def test_plot_traffic_needs_a_panel(tmp_path):
    from fuseops.cli.hwmodel.fpga import plot_traffic

    with pytest.raises(ValueError, match="at least one panel"):
        plot_traffic({}, str(tmp_path / "empty.png"))


def test_systolic_with_a_memory_system(topology, tmp_path, capsys):
    # ws on 4x2 with a 2-word ofmap SRAM (1/512 kB) drained at 1 word/cycle; the 64 kB ifmap
    # and filter SRAMs hold their operands (first fill only, left out as in SCALE-Sim).  Folds:
    # ceil(18/4) = 5 row folds x ceil(3/2) = 2 column folds, each 2X + Y + P - 2 = 33 lines.
    # A 2-column fold writes P x 2 = 50 partial sums over its last P + Y - 1 = 26 lines: 26 are
    # drained meanwhile and 2 fit the SRAM, so it stalls 50 - 26 - 2 = 22 cycles (the 7 lines
    # before the next fold's writes drain the 2 left).  A 1-column fold writes 25 <= 26 + 2: no
    # stall.  Stall = 5 x 22 = 110.
    out_csv = tmp_path / "rows.csv"
    argv = ["systolic", str(topology), "--array", "4x2", "--convention", "scalesim", "--dataflow", "ws",
            "--per-layer", "--csv", str(out_csv)]
    assert cli.main([*argv, "--sram", "64,64,0.001953125", "--dram-bw", "1"]) == 0
    text = capsys.readouterr().out
    compute = 5 * 2 * (2 * 4 + 2 + 25 - 2) - 1  # ceil(18/4) * ceil(3/2) * (2X + Y + P - 2) - 1
    assert f"{compute:,} compute + " in text and "stall" in text
    rows = list(csv.DictReader(out_csv.open()))
    assert int(rows[0]["stall_cycles"]) == 110
    assert int(rows[0]["cycles"]) == compute + 110
    assert int(rows[0]["ofmap_dram_words"]) == 5 * 25 * 3  # one partial-sum row per row fold


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sram", "64,64", "--dram-bw", "2"], "--sram must be three sizes"),
        (["--sram", "64,64,a", "--dram-bw", "2"], "--sram must be three sizes"),
        (["--sram", "64,64,64"], "--sram and --dram-bw go together"),
        (["--dram-bw", "4"], "--sram and --dram-bw go together"),
        (["--sram", "64,0,64", "--dram-bw", "4"], "filter_sram_kb"),
        (["--sram", "64,64,64", "--dram-bw", "0"], "dram_words_per_cycle"),
        (["--word-bytes", "2"], "--word-bytes needs --sram and --dram-bw"),
        (["--sram", "64,64,64", "--dram-bw", "4", "--word-bytes", "0"], "word_bytes"),
    ],
)
def test_systolic_bad_memory_options(topology, capsys, argv, message):
    assert cli.main(["systolic", str(topology), *argv]) == 2
    assert message in capsys.readouterr().err


def test_systolic_help_mentions_the_memory_options(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exc:
        cli.main(["systolic", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--sram KB,KB,KB" in out and "--dram-bw WORDS_PER_CYCLE" in out and "--word-bytes" in out


def test_hwmodel_fpga_validate_prints_the_table_and_sources(capsys):
    assert cli.main(["fpga-validate", "--sources"]) == 0
    out = capsys.readouterr().out
    for key in ("zhang2015", "qiu2016", "ma2017", "Published designs the model cannot express", "VERIFIED",
                "ASSUMED", "Going Deeper with Embedded FPGA Platform", "calibrated: the port count"):
        assert key in out, key
    assert "outside the goal: qiu2016\n" in out  # said, but not an error without --check


def test_hwmodel_fpga_validate_check_exits_1_when_a_design_misses_the_goal(monkeypatch, capsys):
    from dataclasses import replace

    from hwmodel.fpga import validation

    assert cli.main(["fpga-validate", "--check"]) == 1  # qiu2016, end to end
    good = tuple(d for d in validation.DESIGNS if d.key != "qiu2016")
    monkeypatch.setattr(validation, "DESIGNS", good)
    assert cli.main(["fpga-validate", "--check"]) == 0  # the calibrated row does not count
    worse = replace(good[0], conv=validation.Measured(gops=30.0, source="VERIFIED"))
    monkeypatch.setattr(validation, "DESIGNS", (worse,))
    capsys.readouterr()
    assert cli.main(["fpga-validate", "--check"]) == 1
    assert "outside the goal: zhang2015" in capsys.readouterr().out
