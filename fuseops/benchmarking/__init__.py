"""Benchmark drivers shared by ``python -m fuseops bench <target>`` and the scripts in bench/.

Each target module defines ``main(quick, threads, min_time, out_dir, markdown, progress) -> int``.
"""

#: target name -> module (add a target by adding a module and a line here)
TARGETS: dict[str, str] = {
    "fuse": "fuseops.benchmarking.fuse",
    "block": "fuseops.benchmarking.block",
    "network": "fuseops.benchmarking.network",
    "calls": "fuseops.benchmarking.calls",
    "layers": "fuseops.benchmarking.layers",
}
