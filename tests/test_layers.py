"""The layering of ARCHITECTURE.md, checked on every import statement (lazy ones inside
functions too): fuseops core <- hwmodel <- CLIs, report and benchmarks.

A layer may import only the layers below it.  The check reads the source with ``ast``, so it
sees imports that only run on some code paths.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The top layer: command lines, the report and the benchmark drivers.  May import anything.
TOP = ("fuseops.cli", "fuseops.report", "fuseops.benchmarking", "fuseops.__main__")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # ``from fuseops import cli`` imports the module fuseops.cli.
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _layer(module: str) -> str:
    if _within(module, TOP):
        return "top"
    if _within(module, ("hwmodel",)):
        return "hwmodel"
    return "core"


#: What each layer may not import.
FORBIDDEN = {
    "core": ("hwmodel", *TOP),
    "hwmodel": TOP,
    "top": (),
}


def _violations(paths: list[Path]) -> list[str]:
    bad = []
    for path in paths:
        layer = _layer(_module_name(path))
        for line, name in _imports(path):
            if _within(name, FORBIDDEN[layer]):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({layer}) imports {name}")
    return bad


@pytest.mark.parametrize("package", ["fuseops", "hwmodel"])
def test_each_layer_imports_only_the_layers_below(package):
    paths = _sources(package)
    assert len(paths) > 10  # the walk found the package
    assert _violations(paths) == []


def test_only_the_tracer_reads_fuseops_from_hwmodel():
    """hwmodel reads networks through hwmodel/trace.py alone; the models themselves work on Layer records."""
    readers = {str(path.relative_to(ROOT)) for path in _sources("hwmodel")
               if any(_within(name, ("fuseops",)) for _, name in _imports(path))}
    assert readers == {"hwmodel/trace.py"}


def test_the_check_catches_a_violation(tmp_path, monkeypatch):
    """The checker itself: a lazy import of the CLI in a core module, a relative import of the
    report from a core subpackage, and hwmodel importing the CLI by name are all reported."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    files = {
        "fuseops/ops.py": "import torch\n\ndef f():\n    from fuseops.cli import table\n    return table\n",
        "fuseops/block_conv/op.py": "from ..report import document\nfrom . import grid\n",
        "hwmodel/fpga/estimate.py": "from hwmodel.layers import Layer\nfrom fuseops import report\n",
        "fuseops/cli/bench.py": "import hwmodel\nfrom fuseops.report import stages\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = _violations([tmp_path / name for name in files])
    assert found == ["fuseops/ops.py:4 (core) imports fuseops.cli",
                     "fuseops/ops.py:4 (core) imports fuseops.cli.table",
                     "fuseops/block_conv/op.py:1 (core) imports fuseops.report",
                     "fuseops/block_conv/op.py:1 (core) imports fuseops.report.document",
                     "hwmodel/fpga/estimate.py:2 (hwmodel) imports fuseops.report"]
