"""``fuseops report``: one command from kernels to hardware.

Validates the kernels, times them against PyTorch, builds the co-design tables for
the model zoo (parameters, MACs, systolic cycles and speedups, FPGA traffic and fps),
sets measured per-layer latency beside the analytical predictions, and writes
``<out>/index.md`` (and ``index.html``) with tables and PNG plots.
"""

from __future__ import annotations

import os
import time

from fuseops.report.document import Section, write_html, write_markdown
from fuseops.report.stages import EXPECTED_SECONDS, STAGES, Settings, device_available


def expected_seconds(quick: bool, only: tuple[str, ...] | None = None) -> int:
    return sum(EXPECTED_SECONDS[name][0 if quick else 1] for name, _ in STAGES if not only or name in only)


def build_report(out_dir: str = "report", *, quick: bool = False, device: str = "cpu", progress: bool = True,
                 only: tuple[str, ...] | None = None, log=print, tiny: bool = False) -> list[Section]:
    """Run the stages (``only`` names a subset) and write the report; returns the sections."""
    if not device_available(device):
        raise ValueError(f"device={device!r} is not available here (torch.cuda.is_available() is False)")
    unknown = set(only or ()) - {name for name, _ in STAGES}
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {[name for name, _ in STAGES]}")
    os.makedirs(out_dir, exist_ok=True)
    settings = Settings(out_dir=out_dir, quick=quick, device=device, progress=progress, tiny=tiny)
    sections = []
    for name, stage in STAGES:
        if only and name not in only:
            continue
        log(f"[{name}] ...")
        start = time.perf_counter()
        section = stage(settings)
        section.seconds = time.perf_counter() - start
        for line in section.summary:
            log(f"  {line}")
        sections.append(section)
    import torch

    import fuseops

    preamble = (f"fuseops {fuseops.__version__}, torch {torch.__version__}, device `{device}`, "
                f"{'quick' if quick else 'full'} run.  Produced by `python -m fuseops report"
                f"{' --quick' if quick else ''} --device {device} --out {out_dir}`.")
    write_markdown(out_dir, "fuseops report", preamble, sections)
    write_html(out_dir, "fuseops report", preamble, sections)
    return sections
