"""``hwmodel systolic`` (one network on one array) and ``hwmodel speedup`` (the FuSe sweep)."""

from __future__ import annotations

import csv
import os
import time

from fuseops.cli import hwmodel as cli
from fuseops.models.names import FUSE_NETWORKS, FUSE_VARIANTS
from hwmodel.systolic import CONVENTIONS, DATAFLOWS, Estimate, SystolicArray
from hwmodel.systolic_memory import MemorySystem


def _shape(text: str) -> tuple[int, ...]:
    return tuple(cli.parse_int_list("--input-shape", text))


def add_parser(sub) -> None:
    common = dict(dataflow=dict(choices=DATAFLOWS, default="os", help="os, ws or is (default os)"),
                  convention=dict(choices=CONVENTIONS, default="fuseconv",
                                  help="fuseconv (the paper's model, default) or scalesim (SCALE-Sim 3)"))

    p = sub.add_parser("systolic", help="cycles of one network on a systolic array",
                       description="Cycles, MACs and utilisation of MODEL on an X x Y systolic array.")
    p.add_argument("model", metavar="MODEL",
                   help="a zoo name (e.g. mobilenet_v2), an .onnx file or a SCALE-Sim topology CSV")
    p.add_argument("--variant", default="baseline", help="zoo variant (baseline, full, half, full_hybrid, "
                   "half_hybrid, ...); ignored for a CSV or ONNX file")
    p.add_argument("--array", default="64x64", help="ROWSxCOLS (default 64x64)")
    p.add_argument("--dataflow", **common["dataflow"])
    p.add_argument("--convention", **common["convention"])
    p.add_argument("--hardware", choices=("auto", "plain", "fuse"), default="auto",
                   help="plain or FuSe array; auto = FuSe for a zoo FuSe variant or an ONNX file with "
                   "1xK/Kx1 depthwise layers, plain otherwise")
    p.add_argument("--input-shape", default="1,3,224,224", help="N,C,H,W for tracing (default 1,3,224,224)")
    p.add_argument("--per-layer", action="store_true", help="print one row per layer")
    p.add_argument("--csv", metavar="PATH", help="also write the per-layer rows to this CSV")
    p.add_argument("--sram", metavar="KB,KB,KB",
                   help="model a memory system: ifmap, filter and ofmap SRAM sizes in kB (double-buffered, "
                   "as in SCALE-Sim); needs --dram-bw. Without it the array is fed for free")
    p.add_argument("--dram-bw", metavar="WORDS_PER_CYCLE", type=float,
                   help="DRAM bandwidth in words per cycle of each SRAM's DRAM port; needs --sram")
    p.add_argument("--word-bytes", type=int, default=None,
                   help="bytes per word for --sram (default 1, as SCALE-Sim); needs --sram and --dram-bw")
    p.set_defaults(func=run_systolic)

    s = sub.add_parser("speedup", help="FuSe speedup of the 5 FuSe networks x 4 variants over array sizes",
                       description="Baseline cycles on the plain array / FuSe cycles on the FuSe array, for "
                       "every FuSe network and variant of the zoo and each square array size. Prints "
                       "the table, writes it as CSV and plots it as PNG.")
    s.add_argument("--arrays", default="8,16,32,64,128,256", help="square array sizes (default 8,...,256)")
    s.add_argument("--networks", default=",".join(FUSE_NETWORKS), help="comma-separated zoo names")
    s.add_argument("--variants", default=",".join(FUSE_VARIANTS), help="comma-separated FuSe variants")
    s.add_argument("--dataflow", **common["dataflow"])
    s.add_argument("--convention", **common["convention"])
    s.add_argument("--input-shape", default="1,3,224,224", help="N,C,H,W (default 1,3,224,224)")
    s.add_argument("--out-dir", default=".", help="where systolic_speedup.csv/.png go (default .)")
    s.add_argument("--no-plot", action="store_true", help="skip the PNG")
    s.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    s.set_defaults(func=run_speedup)


def _print_estimate(title: str, est: Estimate, per_layer: bool) -> None:
    from fuseops.cli.table import print_table

    print(title)
    if per_layer:
        print_table("per layer", est.table_header(), est.table_rows())
    rows = [(k, f"{v:,}", f"{100 * v / est.total_cycles:.1f}" if est.total_cycles else "-")
            for k, v in est.breakdown.items()]
    rows.append(("total", f"{est.total_cycles:,}", "100.0"))
    print_table("cycles by category", ("category", "cycles", "%"), rows)
    print(f"total: {est.total_cycles:,} cycles, {est.total_macs:,} MACs, "
          f"utilization {100 * est.utilization:.1f}%")
    if est.memory is not None:
        dram = est.dram_words
        print(f"memory: {est.total_compute_cycles:,} compute + {est.total_stall_cycles:,} stall cycles; DRAM words "
              f"read ifmap {dram['ifmap']:,}, filter {dram['filter']:,}, written ofmap {dram['ofmap']:,}")
        if est.memory_unmodelled:
            print(f"NOTE: memory stalls NOT modelled for {len(est.memory_unmodelled)} FuSe 1-D layer(s) "
                  f"(compute cycles only): {', '.join(est.memory_unmodelled)}")
    if est.unsupported:
        print(f"WARNING: {len(est.unsupported)} layer(s) NOT costed (the total leaves them out):")
        for u in est.unsupported:
            print(f"  {u.name} ({u.type_name}): {u.reason}")


def parse_memory(sram: str | None, dram_bw: float | None, word_bytes: int | None = None) -> MemorySystem | None:
    """--sram KB,KB,KB and --dram-bw W (and --word-bytes, default 1) as a MemorySystem (None
    if none is given)."""
    if sram is None and dram_bw is None:
        if word_bytes is not None:
            raise cli.CliError("--word-bytes needs --sram and --dram-bw (it sets the word size of the SRAMs)")
        return None
    if sram is None or dram_bw is None:
        raise cli.CliError("--sram and --dram-bw go together (SRAM sizes in kB and DRAM words per cycle)")
    try:
        sizes = [float(v) for v in sram.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) != 3:
        raise cli.CliError(f"--sram must be three sizes in kB, IFMAP,FILTER,OFMAP (e.g. 64,64,32), got {sram!r}")
    sizes = [int(v) if v.is_integer() else v for v in sizes]
    try:
        return MemorySystem(*sizes, dram_bw, word_bytes=1 if word_bytes is None else word_bytes)
    except (TypeError, ValueError) as err:
        raise cli.CliError(f"--sram/--dram-bw/--word-bytes: {err}") from None


def run_systolic(args) -> int:
    rows, cols = cli.parse_array(args.array)
    memory = parse_memory(args.sram, args.dram_bw, args.word_bytes)
    is_file = args.model.lower().endswith((".csv", ".onnx")) or os.path.isfile(args.model)
    layers = cli.load_layers(args.model, args.variant, _shape(args.input_shape))
    if args.model.lower().endswith(".onnx"):  # a network from a file: FuSe hardware if it has FuSe layers
        auto_fuse = any(layer.kind in ("fuse_row", "fuse_col") for layer in layers)
    else:
        auto_fuse = not is_file and args.variant != "baseline"
    fuse = args.hardware == "fuse" or (args.hardware == "auto" and auto_fuse)
    array = SystolicArray(rows, cols, dataflow=args.dataflow, convention=args.convention, fuse=fuse, memory=memory)
    est = array.estimate(layers)
    label = os.path.basename(args.model) if is_file else f"{args.model} ({args.variant})"
    hardware = "FuSe" if fuse else "plain"
    title = f"{label} on a {rows}x{cols} {hardware} array, {args.dataflow}, {args.convention}"
    _print_estimate(title, est, args.per_layer)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            extra = ("stall_cycles", "ifmap_dram_words", "filter_dram_words", "ofmap_dram_words")
            writer.writerow(("name", "kind", "category", "mapping", "macs", "cycles", "utilization")
                            + (extra if memory else ()))
            for c in est.layers:
                more = tuple("" if getattr(c, k) is None else getattr(c, k) for k in extra) if memory else ()
                writer.writerow((c.name, c.kind, c.category, c.mapping, c.macs, c.cycles,
                                 f"{c.utilization:.6f}") + more)
        print(f"wrote {args.csv}")
    return 0 if est.complete else 1


def sweep(networks, variants, arrays, *, dataflow="os", convention="fuseconv", input_shape=(1, 3, 224, 224),
          progress=True) -> list[dict]:
    """Speedup rows for every network x variant x square array size.  Each network is
    built and traced once; only the cheap estimate runs per array size."""
    models = cli.zoo()
    jobs = [(net, var) for net in networks for var in ("baseline", *variants)]
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc="tracing", unit="net")
        except ImportError:
            bar = None
    traced = {}
    for net, var in jobs:
        if bar is not None:
            bar.set_postfix_str(f"{net} {var}")
        try:
            model = models.get_model(net, variant=var)
        except (ValueError, TypeError, KeyError) as err:
            raise cli.CliError(f"cannot build {net} with variant {var!r}: {err}") from err
        from hwmodel.trace import trace

        traced[net, var] = trace(model, input_shape)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    out = []
    for size in arrays:
        plain = SystolicArray(size, size, dataflow=dataflow, convention=convention, fuse=False)
        fused = SystolicArray(size, size, dataflow=dataflow, convention=convention, fuse=True)
        for net in networks:
            base = plain.estimate(traced[net, "baseline"])
            for var in variants:
                est = fused.estimate(traced[net, var])
                for label, e in (("baseline", base), (var, est)):
                    if e.unsupported:
                        names = ", ".join(u.name for u in e.unsupported)
                        raise cli.CliError(f"{net} ({label}) has layers the model cannot cost: {names}")
                out.append(dict(network=net, variant=var, array=size, baseline_cycles=base.total_cycles,
                                fuse_cycles=est.total_cycles, speedup=base.total_cycles / est.total_cycles,
                                fuse_utilization=est.utilization))
    return out


def write_csv(rows: list[dict], path: str) -> None:
    """The sweep's rows (one per network x variant x array) as CSV."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_speedup(rows: list[dict], networks, variants, path: str) -> None:
    """Speedup against array size, one panel per variant, one line per network."""
    from fuseops.cli.plotting import pyplot

    plt = pyplot()
    ncols = min(2, len(variants))
    nrows = -(-len(variants) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4 * nrows), squeeze=False, sharey=True)
    for ax, var in zip(axes.flat, variants):
        for net in networks:
            pts = sorted((r["array"], r["speedup"]) for r in rows
                         if r["network"] == net and r["variant"] == var)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=net)
        ax.set_xscale("log", base=2)
        sizes = sorted({r["array"] for r in rows})
        ax.set_xticks(sizes, [str(v) for v in sizes])
        ax.set_title(f"FuSe {var}")
        ax.set_xlabel("array size (N x N)")
        ax.set_ylabel("speedup over baseline")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(variants):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_speedup(args) -> int:
    from fuseops.cli.table import markdown_table, print_table

    arrays = cli.parse_int_list("--arrays", args.arrays)
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not networks or not variants:
        raise cli.CliError("--networks and --variants must each name at least one entry")
    start = time.perf_counter()
    rows = sweep(networks, variants, arrays, dataflow=args.dataflow, convention=args.convention,
                 input_shape=_shape(args.input_shape))
    elapsed = time.perf_counter() - start
    columns = ("network", "variant", *(f"{a}x{a}" for a in arrays))
    table = []
    for net in networks:
        for var in variants:
            by_size = {r["array"]: r["speedup"] for r in rows if r["network"] == net and r["variant"] == var}
            table.append((net, var, *(f"{by_size[a]:.2f}" for a in arrays)))
    print_table(f"FuSe speedup ({args.dataflow}, {args.convention}): baseline on the plain array / "
                "FuSe network on the FuSe array", columns, table)
    if args.markdown:
        print(markdown_table(columns, table))
    os.makedirs(args.out_dir, exist_ok=True)
    csv_path = os.path.join(args.out_dir, "systolic_speedup.csv")
    write_csv(rows, csv_path)
    print(f"wrote {csv_path}")
    if not args.no_plot:
        png_path = os.path.join(args.out_dir, "systolic_speedup.png")
        plot_speedup(rows, networks, variants, png_path)
        print(f"wrote {png_path}")
    print(f"{len(networks) * (len(variants) + 1)} networks x {len(arrays)} array sizes in {elapsed:.1f} s")
    return 0
