"""``fuseops validate``: every available backend of both ops against the float64 reference."""

from __future__ import annotations

from fuseops.cli.table import print_table


def run(args) -> int:
    from fuseops.validate import COLUMNS, validate

    results = list(validate(args.device))
    print_table(f"validation on {args.device} (float64, forward and backward vs reference)", COLUMNS,
                [r.row() for r in results])
    failed = [r for r in results if r.status == "FAIL"]
    print(f"validation: {sum(r.status == 'pass' for r in results)} pass, {len(failed)} fail, "
          f"{sum(r.status == 'unavailable' for r in results)} backend/case pairs unavailable")
    return 1 if failed else 0


def add_parser(sub) -> None:
    parser = sub.add_parser("validate", help="check every available backend against the reference in float64")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device to validate on")
    parser.set_defaults(func=run)
