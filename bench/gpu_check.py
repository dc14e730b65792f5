"""The one-shot GPU check: build, test, sanitize and time fuseops on a lent GPU, in one call.

    bash bench/gpu_check.sh            # on the device, from the repo root, with $OUT set
    bash bench/gpu_check.sh --plan     # the stages and their time budgets; the last line is "budget: N s"
    python bench/gpu_check.py --stages env,timing --out /tmp/check

Each stage runs as its own process with its own time limit; a failing or timed-out stage
does not stop the later ones.  Everything lands in three files under ``--out`` (the device
tool returns at most 8): ``summary.md`` (a table of stages, then each stage's result),
``results.json`` (every stage's status, seconds and parsed JSON output) and ``logs.txt``
(each stage's output).  A stage that needs CUDA reports "skipped: no CUDA device"
elsewhere, so the plumbing itself is tested on the CPU (tests/test_gpu_check.py).

Stages, in order (budgets sum to at most 480 s, 8 of the 15 device minutes):

* ``env``: versions (torch, CUDA, triton, driver, nvcc), device name and capability.
* ``build``: the C++/CUDA extension for this device's architecture only.
* ``tests``: the GPU tests (both ops, every backend, against float64, poisoned outputs,
  channels_last, determinism, compile, one 64-bit-index case per op), with few hypothesis
  examples and Triton's autotuning off (``FUSEOPS_TRITON_AUTOTUNE=0``).
* ``sanitize``: compute-sanitizer memcheck (caching allocator off), racecheck and initcheck
  of the CUDA kernels, and one Triton case under memcheck (bench/gpu_sanitize_cases.py).
* ``timing``: kernel times with CUDA events against the copy floor, cuDNN and
  torch.compile of the reference, N=64, fp16 and bf16 (bench/gpu_timing.py).
* ``networks``: MobileNetV2 vs FuSe-Half and ResNet-18 vs block, eval and a training
  step, eager and compiled, N=64, as far as the time allows (bench/gpu_timing.py --networks).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_LIMIT_S = 480
PY = sys.executable


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    budget_s: int
    command: list[str]
    needs_cuda: bool = True
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    what: str = ""


def _env_probe() -> list[str]:
    code = (
        "import json, shutil, subprocess, torch\n"
        "info = {'python': __import__('sys').version.split()[0], 'torch': torch.__version__,\n"
        "        'cuda': torch.version.cuda, 'cuda_available': torch.cuda.is_available()}\n"
        "try:\n    import triton; info['triton'] = triton.__version__\n"
        "except ImportError: info['triton'] = None\n"
        "if torch.cuda.is_available():\n"
        "    p = torch.cuda.get_device_properties(0)\n"
        "    info.update(device=p.name, capability=f'{p.major}.{p.minor}',\n"
        "                memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count)\n"
        "for tool, args in (('nvidia-smi', ['--query-gpu=driver_version', '--format=csv,noheader']),\n"
        "                   ('nvcc', ['--version'])):\n"
        "    path = shutil.which(tool)\n"
        "    info[tool] = subprocess.run([path, *args], capture_output=True, text=True).stdout.strip()"
        ".splitlines()[-1] if path else None\n"
        "print('RESULT ' + json.dumps(info))\n"
    )
    return [PY, "-c", code]


def _build_command() -> list[str]:
    # Only this device's architecture: TORCH_CUDA_ARCH_LIST from the device itself.
    script = (
        "set -e; arch=$(" + PY
        + " -c \"import torch; p=torch.cuda.get_device_capability(); print(f'{p[0]}.{p[1]}')\"); "
        "echo \"building for sm_$arch\"; "
        "export TORCH_CUDA_ARCH_LIST=$arch FUSEOPS_CUDA=1 FUSEOPS_REQUIRE_EXT=1 MAX_JOBS=${MAX_JOBS:-16}; "
        # No network there: the editable install offline, else the extension built in place.
        + PY + " -m pip install -q --no-build-isolation --no-deps --no-index -e . "
        "|| { echo 'pip install failed: building in place'; " + PY + " setup.py build_ext --inplace; }; "
        + PY + " -c \"import fuseops, json; from fuseops import _extension; "
        "print('RESULT ' + json.dumps({'cuda_kernels': _extension.cuda_compiled()}))\""
    )
    return ["bash", "-c", script]


GPU_TESTS = ["tests/test_gpu_fuse_conv.py", "tests/test_gpu_block_pad.py", "tests/test_gpu_block_conv.py"]

STAGES: tuple[Stage, ...] = (
    Stage("env", 10, _env_probe(), needs_cuda=False, what="versions, device"),
    Stage("build", 150, _build_command(), what="C++/CUDA extension for this architecture"),
    # -o addopts=: pyproject's addopts name pytest-benchmark, which the device may not have.
    Stage("tests", 90, [PY, "-m", "pytest", "-q", "-rfEs", "-m", "gpu", "-p", "no:cacheprovider", "-o", "addopts=",
                        *GPU_TESTS],
          env={"CI": "true", "HYPOTHESIS_PROFILE": "gpu", "FUSEOPS_TRITON_AUTOTUNE": "0", "TRITON_INTERPRET": "0"},
          what="both ops, all backends vs float64"),
    Stage("sanitize", 100, ["bash", "bench/gpu_sanitize.sh"],
          env={"FUSEOPS_TRITON_AUTOTUNE": "0", "SANITIZE_LIMIT_S": "18"},  # 5 runs x 18 s within 100 s
          what="memcheck, racecheck, initcheck"),
    Stage("timing", 60, [PY, "bench/gpu_timing.py", "--kernels"], env={"FUSEOPS_TRITON_AUTOTUNE": "0"},
          what="CUDA-event kernel times vs floor, cuDNN, compile"),
    Stage("networks", 70, [PY, "bench/gpu_timing.py", "--networks", "--limit-s", "60"],
          what="MobileNetV2 / FuSe-Half, ResNet-18 / block: eval, train step; eager, compiled"),
)


def plan(stages: tuple[Stage, ...] = STAGES) -> str:
    lines = [f"{stage.name:10s} {stage.budget_s:4d} s  {stage.what}" for stage in stages]
    lines.append(f"budget: {sum(stage.budget_s for stage in stages)} s")
    return "\n".join(lines)


def _cuda_available() -> bool:
    probe = subprocess.run([PY, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True,
                           text=True, timeout=120)
    return probe.stdout.strip() == "True"


def run_stage(stage: Stage, cuda: bool) -> dict:
    """Run one stage under its time limit; {status, seconds, result, output}."""
    if stage.needs_cuda and not cuda:
        return {"status": "skipped: no CUDA device", "seconds": 0.0, "result": None, "output": ""}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHON": PY, **stage.env}
    began = time.perf_counter()
    # Its own process group, so a time-out stops everything the stage started (pip, nvcc,
    # compute-sanitizer), not only its shell, before the next stage is timed.
    process = subprocess.Popen(stage.command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=stage.budget_s)
        status = "ok" if process.returncode == 0 else f"failed (exit {process.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        status = f"timed out after {stage.budget_s} s"
    seconds = time.perf_counter() - began
    results = [json.loads(line[7:]) for line in output.splitlines() if line.startswith("RESULT ")]
    return {"status": status, "seconds": round(seconds, 1), "result": results[-1] if results else None,
            "output": output}


def run_all(stages: tuple[Stage, ...], out: Path) -> dict[str, dict]:
    out.mkdir(parents=True, exist_ok=True)
    cuda = _cuda_available()
    report: dict[str, dict] = {}
    for stage in stages:
        print(f"== {stage.name} (budget {stage.budget_s} s)", flush=True)
        report[stage.name] = run_stage(stage, cuda)
        print(f"   {report[stage.name]['status']} in {report[stage.name]['seconds']} s", flush=True)
        _write(report, out)  # after every stage: a later crash keeps what ran
    return report


def _write(report: dict[str, dict], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(
        {name: {k: v for k, v in entry.items() if k != "output"} for name, entry in report.items()}, indent=1))
    with open(out / "logs.txt", "w") as handle:
        for name, entry in report.items():
            handle.write(f"===== {name}: {entry['status']} ({entry['seconds']} s)\n{entry['output']}\n")
    lines = ["# GPU check", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {entry['status']} | {entry['seconds']} |" for name, entry in report.items()]
    for name, entry in report.items():
        if entry["result"] is not None:
            lines += ["", f"## {name}", "", "```json", json.dumps(entry["result"], indent=1), "```"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", action="store_true", help="print the stages and their budgets, run nothing")
    parser.add_argument("--stages", help="comma-separated subset of: " + ", ".join(s.name for s in STAGES))
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="output folder (default $OUT)")
    args = parser.parse_args(argv)
    stages = STAGES
    if args.stages:
        wanted = args.stages.split(",")
        unknown = sorted(set(wanted) - {s.name for s in STAGES})
        if unknown:
            parser.error(f"unknown stages {unknown}")
        stages = tuple(s for s in STAGES if s.name in wanted)
    if args.plan:
        print(plan(stages))
        return 0
    report = run_all(stages, Path(args.out))
    return 0 if all(e["status"] == "ok" or e["status"].startswith("skipped") for e in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
