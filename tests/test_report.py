"""`fuseops report`: every stage in tiny mode, the files it promises, valid PNGs."""

import csv
import os
import struct
import zlib

import pytest

from fuseops.cli import main
from fuseops.report import build_report, expected_seconds
from fuseops.report.stages import STAGES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path: str) -> None:
    """A PNG whose chunks all carry correct CRCs and that has a non-empty image."""
    with open(path, "rb") as handle:
        data = handle.read()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in {kind!r}"
        chunks.append(kind)
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("report"))
    stages = tuple(name for name, _ in STAGES if name not in ("benchmarks", "networks"))  # timed: below
    sections = build_report(out, quick=True, progress=False, only=stages, log=lambda *_: None, tiny=True)
    return out, sections


def test_every_stage_writes_its_section(tiny_report):
    out, sections = tiny_report
    titles = [s.title for s in sections]
    assert titles == ["Kernel validation", "Model zoo: parameters and MACs", "Systolic array (FuSeConv)",
                      "FPGA (block convolution)", "Measured per-layer latency vs the analytical models"]
    text = open(os.path.join(out, "index.md")).read()
    for title in titles:
        assert f"## {title}" in text
    assert "| op | backend |" in text  # the validation table
    assert "mobilenet_v3_small" in text
    html = open(os.path.join(out, "index.html")).read()
    assert html.count("<table>") >= 5


def test_promised_files_exist_and_plots_are_valid_pngs(tiny_report):
    out, sections = tiny_report
    for section in sections:
        for name, _caption in section.images:
            assert_valid_png(os.path.join(out, name))
    for name in ("zoo.csv", "systolic_speedup.csv", "systolic_speedup.png", "fpga_traffic.png"):
        assert os.path.exists(os.path.join(out, name)), name
    text = open(os.path.join(out, "index.md")).read()
    for section in sections:
        for name, _ in section.images:
            assert f"]({name})" in text


def test_validation_stage_passes_and_zoo_counts_match(tiny_report):
    _, sections = tiny_report
    assert "0 fail" in sections[0].summary[0]
    assert sections[1].summary == ["zoo: all 5 parameter counts equal the paper"]


def test_zoo_csv_has_the_paper_columns(tiny_report):
    out, _ = tiny_report
    lines = open(os.path.join(out, "zoo.csv")).read().splitlines()
    assert lines[0].startswith("network,variant,params,paper params")
    assert len(lines) == 6  # header + 5 variants of one network


def test_latency_stage_reports_a_correlation(tiny_report):
    _, sections = tiny_report
    latency = sections[-1]
    assert "Pearson correlation" in latency.body
    assert len(latency.images) == 2


def test_unknown_stage_and_device_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown stage"):
        build_report(str(tmp_path), only=("validation", "typo"))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            build_report(str(tmp_path), device="cuda")


def test_expected_time_is_announced(capsys, tmp_path):
    assert 0 < expected_seconds(True) < 180 < expected_seconds(False)
    assert main(["report", "--quick", "--only", "validation", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "expected to take about" in out and "index.md" in out
    assert os.path.exists(tmp_path / "index.md")


def test_benchmark_stage_on_tiny_shapes(tmp_path, monkeypatch):
    # The real shapes take minutes; the stage's logic is the same on tiny ones.
    from fuseops.benchmarking import block as block_bench
    from fuseops.benchmarking import fuse as fuse_bench

    monkeypatch.setattr(fuse_bench, "cases", lambda quick=False: [fuse_bench.Case("half", 3, 6, 9, 9, batch=1)])
    monkeypatch.setattr(block_bench, "SHAPES", (("conv 4x8x8", 4, 8, 1),))
    monkeypatch.setattr(block_bench, "BATCH", 1)
    sections = build_report(str(tmp_path), quick=True, progress=False, only=("benchmarks",), log=lambda *_: None)
    body = sections[0].body
    assert "### FuSe convolution" in body and "### Block convolution" in body
    assert "6x9x9" in body
    assert "conv 4x8x8" in body
    assert "torch.compile` baselines are timed in the full run only" in body


def test_networks_stage_tables_a_fuse_network_against_its_baseline(tmp_path, monkeypatch):
    """The timed network stage in its test size: MobileNetV2 and its FuSe-half variant, eager."""
    from fuseops.benchmarking import network as nb
    from fuseops.report.stages import Settings, networks

    monkeypatch.setattr(nb, "ROUND_SECONDS", 0.001)
    section = networks(Settings(out_dir=str(tmp_path), quick=True, device="cpu", progress=False, tiny=True))
    assert section.title == "Whole networks"
    rows = list(csv.DictReader(open(tmp_path / "network.csv")))
    assert [(r["variant"], r["measure"]) for r in rows] == [
        (v, m) for m in ("eval N=1", "eval N=8", "train N=8") for v in ("baseline", "half")]
    for row in rows:
        assert float(row["eager ms"]) > 0 and float(row["eager ref ms"]) > 0
        assert row["compiled ms"] == "-"  # eager only in the quick report
        if row["variant"] == "baseline":
            assert row["eager / baseline"] == "1.00x"
    assert len(section.summary) == 1 and section.summary[0].startswith("networks: mobilenet_v2 half eval N=8 ")
    assert "| network | variant | measure |" in section.body
