"""``fuseops zoo``: the 25 FuSe networks' params and MACs next to the paper's columns.

The paper's FLOPs are MACs plus some BN/activation overhead, so our conv+linear MACs are
expected to be a few percent lower; the parameter counts must match exactly.
"""

from __future__ import annotations

import csv

from fuseops.models.names import FUSE_NETWORKS

COLUMNS = ("network", "variant", "params", "paper params", "params diff", "MMACs", "paper MFLOPs",
           "MACs diff %", "paper top-1 %")


def zoo_rows(input_size: tuple[int, ...] = (1, 3, 224, 224), progress: bool = False,
             networks: list[str] | None = None) -> list[tuple]:
    """One row per FuSe network (all, or those in ``networks``) and variant, as in :data:`COLUMNS`."""
    from fuseops.models import get_model
    from fuseops.models.paper import FUSE_MFLOPS, FUSE_PARAMS, FUSE_TOP1
    from fuseops.profiling import profile

    keys = [key for key in FUSE_PARAMS if networks is None or key[0] in networks]
    if progress:
        from tqdm import tqdm

        keys = tqdm(keys, desc="profiling", unit="model")
    rows = []
    for network, variant in keys:
        result = profile(get_model(network, variant=variant), input_size)
        paper_params, paper_mflops = FUSE_PARAMS[network, variant], FUSE_MFLOPS[network, variant]
        mmacs = result.macs / 1e6
        rows.append((network, variant, result.params, paper_params, result.params - paper_params, round(mmacs, 2),
                     paper_mflops, round(100 * (mmacs - paper_mflops) / paper_mflops, 2),
                     FUSE_TOP1[network, variant]))
    return rows


def write_csv(rows: list[tuple], path: str) -> None:
    """The zoo table (:data:`COLUMNS`) as CSV."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows)


def run(args) -> int:
    from fuseops.cli.table import print_table

    rows = zoo_rows(progress=not args.no_progress, networks=args.network)
    print_table("FuSe networks at 1x3x224x224: ours (conv+linear MACs) vs the FuSeConv paper", COLUMNS,
                [(*r[:2], f"{r[2]:,}", f"{r[3]:,}", r[4], f"{r[5]:.1f}", r[6], f"{r[7]:+.1f}", r[8]) for r in rows])
    mismatched = [f"{r[0]}/{r[1]}" for r in rows if r[4] != 0]
    if mismatched:
        print(f"params differ for: {', '.join(mismatched)}")
    else:
        print(f"params: all {len(rows)} equal the paper")
    print("MACs count conv+linear multiply-accumulates only; the paper's FLOPs add BN/activation overhead.")
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    return 1 if mismatched else 0


def add_parser(sub) -> None:
    parser = sub.add_parser("zoo", help="params and MACs of the 25 FuSe networks next to the paper's numbers")
    parser.add_argument("--csv", metavar="PATH", help="also write the table as CSV to PATH")
    parser.add_argument("--network", action="append", choices=FUSE_NETWORKS,
                        help="only this network (repeatable; default: all five)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
