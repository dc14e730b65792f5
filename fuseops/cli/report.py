"""``fuseops report``: validate, benchmark, model, and write report/index.md with plots."""

from __future__ import annotations

import time


def run(args) -> int:
    from fuseops.report import build_report, expected_seconds

    only = tuple(args.only.split(",")) if args.only else None
    seconds = expected_seconds(args.quick, only)
    duration = f"{seconds} s" if seconds < 120 else f"{seconds / 60:.0f} min"
    print(f"fuseops report ({'quick' if args.quick else 'full'}) on {args.device}: expected to take about "
          f"{duration} on a 2-core CPU; writing {args.out}/index.md")
    start = time.perf_counter()
    sections = build_report(args.out, quick=args.quick, device=args.device, progress=not args.no_progress,
                            only=only)
    print(f"\nsummary ({time.perf_counter() - start:.0f} s):")
    for section in sections:
        for line in section.summary:
            print(f"  - {line}")
    print(f"report: {args.out}/index.md (and index.html)")
    return 0


def add_parser(sub) -> None:
    from fuseops.report.stages import STAGES

    parser = sub.add_parser("report", help="the main job: validate kernels, benchmark, model hardware, write a report")
    parser.add_argument("--out", default="report", help="output folder (default: report/)")
    parser.add_argument("--quick", action="store_true", help="small subsets; under 3 minutes on a 2-core CPU")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device to validate and time on")
    parser.add_argument("--only", metavar="STAGES",
                        help=f"comma-separated subset of: {','.join(name for name, _ in STAGES)}")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
