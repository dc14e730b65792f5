"""``fuseops bench <target>``: time an op's backends (or whole networks) against their
baselines and print a table.

Targets are listed in :data:`fuseops.benchmarking.TARGETS`: ``fuse`` (fuse_conv2d on CPU),
``block`` (block_conv2d on CPU), ``network`` (whole zoo networks, eager and compiled) and
``calls`` (what one call costs around the kernel, per entry to the ops) and ``layers``
(a network's FuSe layers alone, NCHW against channels_last).
Results are also written as CSV (and JSON for ``fuse``) under ``--out`` (default bench/results/).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fuseops.benchmarking import TARGETS

#: Options that only some targets take: argparse dest -> the targets that accept it.
TARGET_OPTIONS: dict[str, tuple[str, ...]] = {
    "sweeps": ("block",),
    "rounds": ("block", "network"),
    "no_compile": ("block", "network"),
    "size": ("network",),
}
_DEFAULTS = {"sweeps": 1, "rounds": None, "no_compile": False, "size": None}


def _target_kwargs(args: argparse.Namespace) -> dict:
    """The target-specific keywords of ``main``; raises ValueError for an option the target lacks."""
    given = [dest for dest, default in _DEFAULTS.items() if getattr(args, dest) != default]
    for dest in given:
        if args.target not in TARGET_OPTIONS[dest]:
            flag = "--" + dest.replace("_", "-")
            raise ValueError(f"{flag} applies to the {' and '.join(TARGET_OPTIONS[dest])} target(s), "
                             f"not {args.target}")
    kwargs: dict = {}
    if args.target == "block":
        kwargs.update(sweeps=args.sweeps, rounds=args.rounds, compile_composition=not args.no_compile)
    elif args.target == "network":
        kwargs.update(compile_=not args.no_compile, rounds=args.rounds)
        if args.size is not None:
            kwargs["size"] = args.size
    return kwargs


def run(args: argparse.Namespace) -> int:
    try:
        kwargs = _target_kwargs(args)
    except ValueError as err:
        print(f"fuseops bench: error: {err}", file=sys.stderr)
        return 2
    module = importlib.import_module(TARGETS[args.target])
    return module.main(quick=args.quick, threads=args.threads or None, min_time=args.min_time,
                       out_dir=None if args.no_write else args.out, markdown=args.markdown,
                       progress=not args.no_progress, **kwargs)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_parser(sub) -> None:
    parser = sub.add_parser("bench", help="benchmark an op's backends against the reference (prints a table)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=sorted(TARGETS), help="what to benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and shorter timing (a smoke run)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch intra-op threads for every provider (default 2; 0 leaves torch's default)")
    parser.add_argument("--min-time", type=float, default=None,
                        help="seconds of timing per measurement (default 0.5, or 0.1 with --quick)")
    parser.add_argument("--out", default="bench/results", help="folder for the result files")
    parser.add_argument("--no-write", action="store_true", help="print only; write no result files")
    parser.add_argument("--markdown", action="store_true", help="also print the tables as markdown")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    only = parser.add_argument_group("options of some targets")
    only.add_argument("--sweeps", type=_positive_int, default=1,
                      help="block: measure every case this many times, one sweep after the other; report medians")
    only.add_argument("--rounds", type=_positive_int, default=None,
                      help="block: timing rounds per case (best of); network: rounds (median of)")
    only.add_argument("--no-compile", action="store_true",
                      help="block, network: skip the torch.compile providers/settings")
    only.add_argument("--size", type=_positive_int, default=None, help="network: input H = W (default 224)")
    parser.set_defaults(func=run)
