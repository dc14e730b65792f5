"""The one-shot GPU check's plumbing, on the CPU: the plan fits the budget, stages run under
their own time limits, a failure or time-out does not stop the next stage, GPU stages report
"skipped" without a GPU, and the outputs are the three files the device tool brings back.
The timing script's logic runs on the CPU too (``--smoke --device cpu``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402


def test_plan_fits_the_budget():
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--plan"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["env", "build", "tests", "sanitize", "timing", "networks"]
    budget = int(lines[-1].removeprefix("budget: ").removesuffix(" s"))
    assert budget == sum(stage.budget_s for stage in gpu_check.STAGES) <= 480


def test_stages_run_in_isolation(tmp_path, monkeypatch):
    stages = (
        gpu_check.Stage("ok", 30, [sys.executable, "-c", "print('RESULT {\"x\": 1}')"], needs_cuda=False),
        gpu_check.Stage("fails", 30, [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
                        needs_cuda=False),
        gpu_check.Stage("slow", 1, [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(20)"],
                        needs_cuda=False),
        gpu_check.Stage("gpu", 30, [sys.executable, "-c", "raise SystemExit(9)"]),
        gpu_check.Stage("after", 30, [sys.executable, "-c", "print('RESULT {\"y\": [2]}')"], needs_cuda=False),
    )
    monkeypatch.setattr(gpu_check, "_cuda_available", lambda: False)
    report = gpu_check.run_all(stages, tmp_path)
    assert {name: entry["status"] for name, entry in report.items()} == {
        "ok": "ok", "fails": "failed (exit 3)", "slow": "timed out after 1 s", "gpu": "skipped: no CUDA device",
        "after": "ok"}
    assert report["slow"]["seconds"] < 10
    assert sorted(path.name for path in tmp_path.iterdir()) == ["logs.txt", "results.json", "summary.md"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["ok"]["result"] == {"x": 1} and results["after"]["result"] == {"y": [2]}
    logs = (tmp_path / "logs.txt").read_text()
    assert "boom" in logs and "started" in logs
    summary = (tmp_path / "summary.md").read_text()
    assert "| slow | timed out after 1 s |" in summary and '"y"' in summary


def test_env_stage_on_this_machine(tmp_path):
    result = subprocess.run([sys.executable, "bench/gpu_check.py", "--stages", "env,build", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["env"]["status"] == "ok"
    assert results["env"]["result"]["torch"].startswith("2.")
    assert results["env"]["result"]["cuda_available"] is False
    assert results["build"]["status"] == "skipped: no CUDA device"
    bad = subprocess.run([sys.executable, "bench/gpu_check.py", "--stages", "nope"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "unknown stages ['nope']" in bad.stderr


@pytest.mark.slow
def test_timing_script_logic_on_the_cpu():
    result = subprocess.run([sys.executable, "bench/gpu_timing.py", "--kernels", "--smoke", "--device", "cpu"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    last = json.loads([line for line in result.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])
    fuse, block = last["fuse_conv2d"][0], last["block_conv2d"][0]
    assert fuse["cpu_rel_error"] < 1e-5
    assert fuse["copy_ms"] > 0 and fuse["cpu_ms"] > 0 and fuse["compiled_reference_ms"] > 0
    assert block["cpu_ms"] > 0 and block["cudnn_ms"] > 0
