"""``fuseops bench <target>``: time an op's backends against its baselines and print a table.

Targets are listed in :data:`fuseops.benchmarking.TARGETS` (``fuse``: fuse_conv2d on CPU).
Results are also written as JSON and CSV under ``--out`` (default bench/results/).
"""

from __future__ import annotations

import importlib

from fuseops.benchmarking import TARGETS


def run(args) -> int:
    module = importlib.import_module(TARGETS[args.target])
    return module.main(quick=args.quick, threads=args.threads or None, min_time=args.min_time,
                       out_dir=None if args.no_write else args.out, markdown=args.markdown,
                       progress=not args.no_progress)


def add_parser(sub) -> None:
    parser = sub.add_parser("bench", help="benchmark an op's backends against the reference (prints a table)",
                            description=__doc__)
    parser.add_argument("target", choices=sorted(TARGETS), help="what to benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and shorter timing (a smoke run)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch intra-op threads for every provider (default 2; 0 leaves torch's default)")
    parser.add_argument("--min-time", type=float, default=None,
                        help="seconds of timing per measurement (default 0.5, or 0.1 with --quick)")
    parser.add_argument("--out", default="bench/results", help="folder for the JSON/CSV results")
    parser.add_argument("--no-write", action="store_true", help="print only; write no result files")
    parser.add_argument("--markdown", action="store_true", help="also print the tables as markdown")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
