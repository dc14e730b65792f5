"""The ``hwmodel`` console script (also ``python -m fuseops.cli.hwmodel``): hardware-model
sub-commands, one module per model listed in ``COMMANDS``.  They sit in the CLI layer, above
the ``hwmodel`` package, which holds only the models.

Each module defines ``add_parser(subparsers)``, registering its sub-commands with a
``func`` that takes the parsed args and returns an exit code.  Helpers shared by the
sub-commands (network loading, array parsing) live here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fuseops.cli import CliError, command_parser, run_command
from hwmodel.layers import Layer

COMMANDS: tuple[str, ...] = ("fuseops.cli.hwmodel.systolic", "fuseops.cli.hwmodel.fpga")

__all__ = ["COMMANDS", "CliError", "build_parser", "load_layers", "main", "parse_array", "parse_int_list", "zoo"]


def zoo():
    """The model zoo module (``fuseops.models``): tests replace this to use their own nets."""
    try:
        from fuseops import models
    except ImportError as err:
        raise CliError(f"the model zoo (fuseops.models) is not available: {err}") from err
    return models


def parse_array(text: str) -> tuple[int, int]:
    """"64x64" or "64" -> (rows, cols)."""
    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise CliError(f"--array must look like 64x64 or 64, got {text!r}") from None
    if len(dims) == 1:
        dims *= 2
    if len(dims) != 2 or min(dims) < 1:
        raise CliError(f"--array must be ROWSxCOLS with positive sizes, got {text!r}")
    return dims[0], dims[1]


def parse_int_list(option: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CliError(f"{option} must be a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise CliError(f"{option} needs positive integers, got {text!r}")
    return values


def load_layers(model: str, variant: str, input_shape: Sequence[int]) -> list[Layer]:
    """Layers of MODEL: an ONNX file (.onnx; a dynamic batch takes ``input_shape[0]``), a
    SCALE-Sim topology CSV (a path that exists or ends in .csv) or a zoo name traced at
    ``input_shape``."""
    from hwmodel.onnx_reader import read_onnx
    from hwmodel.topology import read_topology
    from hwmodel.trace import trace

    if model.lower().endswith(".onnx"):
        try:
            return read_onnx(model, batch=input_shape[0])
        except (OSError, ValueError, ImportError) as err:
            raise CliError(str(err)) from err

    if model.lower().endswith(".csv") or os.path.isfile(model):
        if not os.path.isfile(model):
            raise CliError(f"topology file not found: {model}")
        try:
            return read_topology(model)
        except ValueError as err:
            raise CliError(str(err)) from err
    models = zoo()
    names = list(models.list_models())
    if model not in names:
        raise CliError(f"unknown model {model!r}: expected a topology .csv or one of {', '.join(names)}")
    try:
        net = models.get_model(model, variant=variant)
    except (ValueError, TypeError) as err:
        raise CliError(f"cannot build {model} with variant {variant!r}: {err}") from err
    return trace(net, input_shape)


def build_parser() -> argparse.ArgumentParser:
    return command_parser("hwmodel", "Analytical hardware models of CNNs.", COMMANDS)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
