"""``hwmodel fpga MODEL``: a zoo network or an ONNX file on an FPGA board, every schedule, tables
and a traffic chart.

Mounted as a sub-command of ``hwmodel`` with :func:`add_parser`.
rich (tables) and matplotlib (the PNG) are imported only here, and only when used.
"""

from __future__ import annotations

import argparse
import os

from hwmodel.fpga.devices import DEVICES
from hwmodel.fpga.engine import Engine
from hwmodel.fpga.estimate import SCHEDULES, FpgaEstimate, estimate, format_cell
from hwmodel.fpga.schedule import OBJECTIVES, has_block_convs
from hwmodel.layers import Layer

KIND_ORDER = ("input", "weights", "intermediate", "output")


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("model", help="a model-zoo name, e.g. resnet18 or vgg16 (see fuseops.models), or an .onnx file")
    p.add_argument("--variant", default="block", help="zoo variant (default: block)")
    p.add_argument("--device", default="zc706", choices=sorted(DEVICES))
    p.add_argument("--bits", type=int, default=16, choices=(8, 16, 32),
                   help="32: float, 16 or 8: fixed point; the DSPs per MAC follow the device's DSP family; "
                        "default 16")
    p.add_argument("--schedule", default="block-fused", choices=list(SCHEDULES),
                   help="the schedule whose tables are printed (the chart shows all); default block-fused")
    p.add_argument("--block-size", type=int, default=28, help="block size for block variants (default 28)")
    p.add_argument("--blocking", default="fixed", choices=("fixed", "hierarchical"))
    p.add_argument("--input-size", type=int, default=224, help="input H = W (default 224)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--freq-mhz", type=float, default=None, help="clock (default: the device's)")
    p.add_argument("--tm", type=int, default=None, help="MAC array rows; with --tn, fixes the engine")
    p.add_argument("--tn", type=int, default=None, help="MAC array columns")
    p.add_argument("--objective", default="traffic", choices=OBJECTIVES,
                   help="fused grouping: least total traffic, or least intermediate traffic first")
    p.add_argument("--plot", default="fpga-traffic.png", help="PNG path for the traffic chart")
    p.add_argument("--no-plot", action="store_true", help="don't write the PNG")
    p.set_defaults(func=run)
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``fpga`` and ``fpga-validate`` sub-commands on an ``add_subparsers()`` object."""
    p = subparsers.add_parser(
        "fpga", help="FPGA model: latency, DRAM traffic and on-chip buffers per schedule",
        description="Estimate a network on an FPGA board under the layer, block-fused and tiled-fused "
                    "schedules: latency, fps, DRAM traffic by kind, buffer need vs block RAM.",
    )
    v = subparsers.add_parser(
        "fpga-validate", help="the FPGA model against published, measured accelerators",
        description="Configure the FPGA model as each published accelerator (board, precision, clock, DSPs, "
                    "engine) and print its throughput beside the measured one, convolution layers and end to "
                    "end apart, with the sources and the designs the model cannot express.",
    )
    v.add_argument("--sources", action="store_true", help="also print each design's configuration and sources")
    v.add_argument("--check", action="store_true",
                   help="exit 1 when a design that is not calibrated falls outside the goal")
    v.set_defaults(func=run_validation)
    return _configure(p)


def run_validation(args: argparse.Namespace) -> int:
    """Print the validation table; with ``--check``, exit 1 if an uncalibrated design falls outside the goal."""
    from fuseops.cli.table import print_table
    from hwmodel.fpga import validation

    comparisons = validation.run()
    rows = validation.table_rows(comparisons)
    print_table(f"FPGA model vs published accelerators (ratio = model / measured throughput; goal: conv within "
                f"{validation.GOAL_CONV:.0%}, end to end within {validation.GOAL_END_TO_END:.0%})",
                list(rows[0]), [list(r.values()) for r in rows])
    if args.sources:
        for c in comparisons:
            d = c.design
            print(f"\n{d.key}: {d.paper}")
            for fact in d.facts:
                print(f"  - {fact}")
            for label, measured in (("conv", d.conv), ("end to end", d.end_to_end)):
                if measured is not None:
                    print(f"  - measured {label}: {measured.source}")
            if d.calibrated:
                print(f"  - calibrated: {d.calibrated}")
            if d.note:
                print(f"  - note: {d.note}")
    print_table("Published designs the model cannot express", ["design", "what is missing"],
                [[k, v] for k, v in validation.NOT_EXPRESSIBLE.items()])
    outside = [c.design.key for c in comparisons if not c.within_goal and not c.design.calibrated]
    if outside:
        print(f"outside the goal: {', '.join(outside)}")
    return 1 if outside and args.check else 0


def load_layers(args: argparse.Namespace) -> list[Layer]:
    """Read the ONNX file (batch ``--batch``), or build the zoo model
    (``fuseops.cli.hwmodel.zoo()``) and trace it."""
    from fuseops.cli.hwmodel import CliError, zoo
    from hwmodel.onnx_reader import read_onnx
    from hwmodel.trace import trace

    if args.model.lower().endswith(".onnx"):
        try:
            return list(read_onnx(args.model, batch=args.batch))
        except (OSError, ValueError, ImportError) as err:
            raise CliError(str(err)) from err
    models = zoo()
    names = list(models.list_models())
    if args.model not in names:
        raise CliError(f"unknown model {args.model!r}: expected one of {', '.join(names)}")
    kwargs = {"variant": args.variant}
    if args.variant == "block":
        kwargs.update(block_size=args.block_size, blocking=args.blocking)
    try:
        model = models.get_model(args.model, **kwargs)
    except (TypeError, ValueError) as err:
        raise CliError(f"cannot build {args.model} with {kwargs}: {err}") from err
    return list(trace(model, (args.batch, 3, args.input_size, args.input_size)))


def _label(args: argparse.Namespace) -> str:
    if args.model.lower().endswith(".onnx"):
        return os.path.basename(args.model)
    return f"{args.model} ({args.variant})"


def run(args: argparse.Namespace) -> int:
    return report(load_layers(args), args)


def report(layers: list[Layer], args: argparse.Namespace) -> int:
    """Estimate every applicable schedule, print the chosen one's tables, the comparison, and plot."""
    from fuseops.cli.hwmodel import CliError
    from fuseops.cli.table import print_table

    if (args.tm is None) != (args.tn is None):
        raise CliError("give both --tm and --tn, or neither")
    engine = Engine(args.tm, args.tn) if args.tm is not None else None
    schedules = [s for s in SCHEDULES if s != "block-fused" or has_block_convs(layers)]
    if args.schedule not in schedules:
        raise CliError(f"{_label(args)} has no block convs; --schedule block-fused needs a block variant")
    results: dict[str, FpgaEstimate] = {}
    for schedule in schedules:
        try:
            results[schedule] = estimate(layers, device=args.device, bits=args.bits, engine=engine,
                                         schedule=schedule, freq_mhz=args.freq_mhz, objective=args.objective)
        except ValueError as err:  # e.g. an engine larger than the device
            raise CliError(str(err)) from err
    chosen = results[args.schedule]
    print(chosen.summary())
    for title, rows in ((f"{args.schedule}: groups", chosen.groups), (f"{args.schedule}: layers", chosen.layers)):
        print_table(title, list(rows[0]), [[format_cell(v) for v in row.values()] for row in rows])
    print_table(
        f"{_label(args)} on {args.device}, {args.bits}-bit: schedules",
        ["schedule", "fps", "ms", "GOPS", "DRAM MB", *[f"{k} MB" for k in KIND_ORDER], "buffer KB", "fits",
         "extra MMAC"],
        [[s, f"{r.fps:.2f}", f"{r.latency_s * 1e3:.2f}", f"{r.gops:.1f}", f"{r.total_dram_bytes / 1e6:.2f}",
          *[f"{r.dram_bytes[k] / 1e6:.2f}" for k in KIND_ORDER], f"{r.buffer_bytes / 1e3:.0f}", r.fits,
          f"{r.extra_macs / 1e6:.0f}"] for s, r in results.items()],
    )
    print("Assumptions:")
    for line in chosen.assumptions:
        print(f"- {line}")
    if not args.no_plot:
        plot_traffic({f"{_label(args)} on {args.device}, {args.bits}-bit": results}, args.plot)
        print(f"wrote {args.plot}")
    return 0


def plot_traffic(panels: dict[str, dict[str, FpgaEstimate]], path: str) -> None:
    """One panel per title: a stacked bar per schedule of DRAM megabytes by kind, with fps."""
    if not panels:
        raise ValueError("plot_traffic needs at least one panel (title -> {schedule: FpgaEstimate})")
    from fuseops.cli.plotting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 if len(panels) == 1 else 3.8 * len(panels), 4),
                             squeeze=False)
    for ax, (title, results) in zip(axes.flat, panels.items()):
        names = list(results)
        bottom = [0.0] * len(names)
        for kind in KIND_ORDER:
            values = [results[s].dram_bytes[kind] / 1e6 for s in names]
            ax.bar(names, values, bottom=bottom, label=kind)
            bottom = [b + v for b, v in zip(bottom, values)]
        for x, (s, top) in enumerate(zip(names, bottom)):
            ax.annotate(f"{results[s].fps:.1f} fps", (x, top), ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("DRAM traffic per batch (MB)")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.margins(y=0.08)  # room for the fps labels
    axes.flat[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
