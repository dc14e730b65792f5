"""``fuseops info``: versions, and which backend can run each op on each device, and why not."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

from fuseops import _extension, backends
from fuseops.cli.table import print_table


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def backend_rows() -> list[tuple[str, str, str, str, str]]:
    """(op, backend, device, status, reason) for every registered op and backend."""
    import fuseops  # noqa: F401  (registers every op)

    rows = []
    for op in backends.registered_ops():
        for backend in backends.BACKENDS:
            for device in ("cpu", "cuda"):
                avail = backends.availability(op, backend, torch.device(device))
                rows.append((op, backend, device, "yes" if avail.ok else "no", avail.reason))
    return rows


def _cpu_features() -> str:
    """What the built C++ FuSe kernels include (the AVX-512 run path, or not)."""
    ok, reason = _extension.has_kernel("fuse_conv2d_cpu_features")
    return torch.ops.fuseops_ext.fuse_conv2d_cpu_features() if ok else f"none ({reason})"


def run(args) -> int:
    import fuseops

    versions = [
        ("fuseops", fuseops.__version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__ + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else " (CPU)")),
        ("triton", _version("triton")),
        ("numpy", _version("numpy")),
        ("cuda device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none"),
        ("fuseops._C", _extension.build_note()),
        ("fuse_conv2d cpu kernels", _cpu_features()),
        ("selected backend", backends.current_backend()),
    ]
    print_table("fuseops environment", ("component", "version"), versions)
    print_table("backends (op x backend x device)", ("op", "backend", "device", "available", "why not"),
                backend_rows())
    return 0


def add_parser(sub) -> None:
    parser = sub.add_parser("info", help="versions and available backends, with the reason for each missing one")
    parser.set_defaults(func=run)
