"""Run the real SCALE-Sim (PyPI ``scalesim`` 3.0.0) to check ``convention="scalesim"``
and the memory model of :mod:`hwmodel.systolic_memory`.

SCALE-Sim 3.0.0 crashes with numpy >= 2.4 and pins other packages of its own, so it
gets a virtual environment of its own, created on first use (needs pip access to PyPI)
and cached, by default in ``~/.cache/fuseops/scalesim-venv`` (``$FUSEOPS_SCALESIM_VENV``
overrides).  Everything SCALE-Sim needs runs in a child process of that venv; this
module only writes its inputs and reads its COMPUTE_REPORT.csv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCALESIM_REQUIREMENTS = ("scalesim==3.0.0", "numpy<2.4")

# By default, big SRAMs and the "CALC" (estimate-bandwidth) mode keep the memory system
# from stalling the array, so "Total Cycles" is the pure compute count the formulas model.
#
# A run with a memory system instead sets the three SRAM sizes and InterfaceBandwidth = USER.
# In USER mode SCALE-Sim 3.0.0 (single_layer_sim.run) takes the ofmap drain bandwidth from
# "Bandwidth" but the ifmap and filter DRAM bandwidths from the [layout] section's
# IfmapSRAMBankBandwidth / FilterSRAMBankBandwidth, which its read buffer asserts are
# divisible by the bank count; so all three get the same words/cycle and one bank.  The
# request-buffer sizes only matter with Ramulator traces, which stay off.
_DEFAULT_MEMORY = dict(bw_mode="CALC", ifmap_kb=10240, filter_kb=10240, ofmap_kb=10240, bandwidth=10,
                       bank_bw=10, bank_num=10)

_CONFIG = """[general]
run_name = {run_name}

[run_presets]
InterfaceBandwidth = {bw_mode}
UseRamulatorTrace = False

[architecture_presets]
ArrayHeight = {rows}
ArrayWidth = {cols}
IfmapSramSzkB = {ifmap_kb}
FilterSramSzkB = {filter_kb}
OfmapSramSzkB = {ofmap_kb}
IfmapOffset = 0
FilterOffset = 10000000
OfmapOffset = 20000000
Dataflow = {dataflow}
ReadRequestBuffer = 32
WriteRequestBuffer = 32
Bandwidth = {bandwidth}

[layout]
IfmapCustomLayout = False
IfmapSRAMBankBandwidth = {bank_bw}
IfmapSRAMBankNum = {bank_num}
IfmapSRAMBankPort = 2
FilterCustomLayout = False
FilterSRAMBankBandwidth = {bank_bw}
FilterSRAMBankNum = {bank_num}
FilterSRAMBankPort = 2

[sparsity]
SparsitySupport = false
SparseRep = ellpack_block
OptimizedMapping = false
BlockSize = 8
RandomNumberGeneratorSeed = 40
"""

# Runs inside the SCALE-Sim venv: argv = job file (JSON) and result file.
_DRIVER = r"""
import contextlib, csv, io, json, os, sys, time
from scalesim.scale_sim import scalesim

job = json.load(open(sys.argv[1]))
results = []
for run in job["runs"]:
    work = run["dir"]
    cfg = os.path.join(work, "scale.cfg")
    layout = os.path.join(work, "layout.csv")
    with open(cfg, "w") as f:
        f.write(run["config"])
    with open(layout, "w") as f:
        f.write("Layer name,\n")  # header only: no custom layouts
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        sim = scalesim(save_disk_space=True, verbose=False, config=cfg, topology=job["topology"],
                       layout=layout)
        sim.run_scale(top_path=os.path.join(work, "out"))
    seconds = time.perf_counter() - start
    report = os.path.join(work, "out", run["run_name"], "COMPUTE_REPORT.csv")
    with open(report) as f:
        rows = list(csv.reader(f))
    header = [h.strip() for h in rows[0]]
    cycles = header.index("Total Cycles")
    stalls = header.index("Stall Cycles")
    body = [r for r in rows[1:] if r and r[0].strip()]
    with open(os.path.join(work, "out", run["run_name"], "DETAILED_ACCESS_REPORT.csv")) as f:
        detail = list(csv.reader(f))
    dhead = [h.strip() for h in detail[0]]
    dbody = [r for r in detail[1:] if r and r[0].strip()]
    dram = {key: [int(float(r[dhead.index(col)])) for r in dbody]
            for key, col in (("ifmap", "DRAM IFMAP Reads"), ("filter", "DRAM Filter Reads"),
                             ("ofmap", "DRAM OFMAP Writes"))}
    results.append({"total_cycles": [int(float(r[cycles])) for r in body],
                    "stall_cycles": [int(float(r[stalls])) for r in body], "seconds": seconds,
                    "dram": dram})
json.dump(results, open(sys.argv[2], "w"))
"""


@dataclass(frozen=True)
class ScaleSimRun:
    """One SCALE-Sim run: per topology row (depthwise rows expanded per channel, as
    SCALE-Sim does) the "Total Cycles" and "Stall Cycles" columns, and the seconds the
    simulation took inside SCALE-Sim's process (imports excluded)."""

    rows: int
    cols: int
    dataflow: str
    total_cycles: tuple[int, ...]
    stall_cycles: tuple[int, ...]
    seconds: float
    #: DETAILED_ACCESS_REPORT.csv's "DRAM IFMAP Reads", "DRAM Filter Reads" and "DRAM OFMAP
    #: Writes" per report row (words).
    dram_ifmap_reads: tuple[int, ...] = ()
    dram_filter_reads: tuple[int, ...] = ()
    dram_ofmap_writes: tuple[int, ...] = ()
    #: The memory system of the run, None for the default (no stalls).
    memory: object = None


def default_venv() -> Path:
    return Path(os.environ.get("FUSEOPS_SCALESIM_VENV", Path.home() / ".cache" / "fuseops" / "scalesim-venv"))


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _works(python: Path) -> bool:
    if not python.exists():
        return False
    probe = "import importlib.metadata as m, scalesim.scale_sim; print(m.version('scalesim'))"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip() == "3.0.0"


def ensure_scalesim(venv: str | os.PathLike | None = None) -> Path:
    """The python of a venv with SCALE-Sim 3.0.0, creating the venv if needed.

    Built in a temporary sibling directory and renamed into place, so an interrupted
    install never leaves a half-made venv at ``venv``.  Raises RuntimeError with pip's
    output if the install fails (for example, without network access to PyPI).
    """
    venv = Path(venv) if venv is not None else default_venv()
    python = _venv_python(venv)
    if _works(python):
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=venv.name + ".", dir=venv.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(staging)], check=True, capture_output=True)
        pip = subprocess.run([str(_venv_python(staging)), "-m", "pip", "install", "-q",
                              "--disable-pip-version-check", *SCALESIM_REQUIREMENTS],
                             capture_output=True, text=True)
        if pip.returncode != 0:
            raise RuntimeError(f"installing {' '.join(SCALESIM_REQUIREMENTS)} into {staging} failed:\n"
                               f"{pip.stdout[-2000:]}{pip.stderr[-4000:]}")
        if venv.exists():
            shutil.rmtree(venv)
        # A renamed venv still works through its python (which finds its site-packages
        # relative to itself); only console-script shebangs keep the staging path, and
        # none is used: everything runs as `python -m` or `python driver.py`.
        staging.rename(venv)
        staging = None
        if not _works(python):
            raise RuntimeError(f"SCALE-Sim was installed into {venv} but does not import")
        return python
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _memory_settings(memory: Any) -> dict:
    """The config fields of a :class:`hwmodel.systolic_memory.MemorySystem` (None: the
    default, stall-free settings).  SCALE-Sim has 1-byte words and whole-kB SRAM sizes."""
    if memory is None:
        return _DEFAULT_MEMORY
    from hwmodel.systolic_memory import MemorySystem

    if not isinstance(memory, MemorySystem):
        raise TypeError(f"memory must be a hwmodel MemorySystem or None, got {type(memory).__name__}")
    if memory.word_bytes != 1:
        raise ValueError(f"SCALE-Sim 3.0.0 has 1-byte words; memory.word_bytes is {memory.word_bytes}")
    sizes = (memory.ifmap_sram_kb, memory.filter_sram_kb, memory.ofmap_sram_kb)
    if any(size != int(size) for size in sizes):
        raise ValueError(f"SCALE-Sim takes whole-kB SRAM sizes, got {sizes}")
    if not memory.double_buffered:
        raise ValueError("SCALE-Sim only models double-buffered SRAMs")
    bandwidth = memory.dram_words_per_cycle
    if bandwidth != int(bandwidth):
        raise ValueError(f"SCALE-Sim takes a whole number of words per cycle, got {bandwidth}")
    return dict(bw_mode="USER", ifmap_kb=int(sizes[0]), filter_kb=int(sizes[1]), ofmap_kb=int(sizes[2]),
                bandwidth=int(bandwidth), bank_bw=int(bandwidth), bank_num=1)


def run_scalesim(topology: str | os.PathLike, configs: Sequence[tuple], *,
                 python: str | os.PathLike | None = None, timeout: float = 1800) -> list[ScaleSimRun]:
    """Run SCALE-Sim on ``topology`` once per (rows, cols, dataflow) or (rows, cols,
    dataflow, memory) in ``configs``, all in one child process.  ``memory`` is a
    :class:`hwmodel.systolic_memory.MemorySystem` (SRAM sizes and USER bandwidth) or None
    (10 MiB SRAMs, CALC bandwidth: no stalls).  ``python`` defaults to
    :func:`ensure_scalesim`'s."""
    python = Path(python) if python is not None else ensure_scalesim()
    configs = [tuple(c) if len(c) == 4 else (*c, None) for c in configs]
    with tempfile.TemporaryDirectory(prefix="hwmodel-scalesim-") as tmp:
        runs = []
        for i, (rows, cols, dataflow, memory) in enumerate(configs):
            work = os.path.join(tmp, f"run{i}")
            os.makedirs(work)
            run_name = f"run{i}"
            config = _CONFIG.format(run_name=run_name, rows=rows, cols=cols, dataflow=dataflow,
                                    **_memory_settings(memory))
            runs.append({"dir": work, "run_name": run_name, "config": config})
        job = os.path.join(tmp, "job.json")
        result = os.path.join(tmp, "result.json")
        driver = os.path.join(tmp, "driver.py")
        with open(job, "w") as f:
            json.dump({"topology": os.path.abspath(topology), "runs": runs}, f)
        with open(driver, "w") as f:
            f.write(_DRIVER)
        done = subprocess.run([str(python), driver, job, result], capture_output=True, text=True,
                              timeout=timeout, cwd=tmp)
        if done.returncode != 0:
            raise RuntimeError(f"SCALE-Sim failed (exit {done.returncode}):\n{done.stdout[-2000:]}"
                               f"{done.stderr[-4000:]}")
        with open(result) as f:
            data = json.load(f)
    return [ScaleSimRun(r, c, df, tuple(d["total_cycles"]), tuple(d["stall_cycles"]), d["seconds"],
                        tuple(d["dram"]["ifmap"]), tuple(d["dram"]["filter"]), tuple(d["dram"]["ofmap"]), mem)
            for (r, c, df, mem), d in zip(configs, data)]
