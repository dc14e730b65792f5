"""``python -m fuseops`` / ``fuseops``: one sub-command per module in this package.

Each module named in ``COMMANDS`` defines ``add_parser(subparsers)`` which registers
its sub-command and sets ``func`` (called with the parsed args, returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: tuple[str, ...] = ("info", "validate", "bench", "report", "zoo", "train", "evaluate")


class CliError(Exception):
    """A problem with the command line: printed as one line, exit code 2."""


def command_parser(prog: str, description: str, modules: tuple[str, ...]) -> argparse.ArgumentParser:
    """A parser with one sub-command per module, each registered by the module's ``add_parser``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).add_parser(sub)
    return parser


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and run the sub-command's ``func``; help and exit code 2 without one,
    a one-line message and exit code 2 for a :class:`CliError`."""
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CliError as err:
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    return command_parser("fuseops", "FuSe and block convolutions: kernels, benchmarks, model zoo and hardware models.",
                          tuple(f"fuseops.cli.{name}" for name in COMMANDS))


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
