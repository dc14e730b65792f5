"""``fuseops train``: train a zoo network with a paper's recipe, on one process or under torchrun.

    python -m fuseops train --data DIR --model mobilenet_v2 --variant half --recipe fuseconv --out runs/a
    torchrun --standalone --nproc_per_node 4 -m fuseops train --data DIR --model resnet18 --variant block ...
"""

from __future__ import annotations

import argparse

from fuseops.models.names import BLOCK_NETWORKS, FUSE_NETWORKS, PLAIN_NETWORKS

NETWORKS = tuple(dict.fromkeys(FUSE_NETWORKS + PLAIN_NETWORKS + BLOCK_NETWORKS))
PADDING_MODES = ("constant", "replicate", "reflect")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="DIR/train/<class>/*.png|jpg and DIR/val/<class>/*, or the CIFAR batches' parent folder")
    parser.add_argument("--dataset", choices=("cifar10", "cifar100"),
                        help="read DIR/cifar-10-batches-py/ or DIR/cifar-100-python/ instead of image folders")
    parser.add_argument("--img-size", type=int, default=224, metavar="S", help="input resolution (default 224)")
    parser.add_argument("--workers", type=int, default=0, metavar="N", help="data loader processes (default 0)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_model_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--model", choices=NETWORKS, required=required, help="zoo network")
    parser.add_argument("--variant", help="baseline, full, half, full_hybrid, half_hybrid or block (default baseline)")
    parser.add_argument("--block-size", type=int, metavar="B",
                        help="block variant: block size (default 28; 56 for resnet50)")
    parser.add_argument("--padding-mode", choices=PADDING_MODES, help="block variant: padding of each block")
    parser.add_argument("--blocking", choices=("fixed", "hierarchical"),
                        help="block variant: fixed pixels or blocks per map")
    parser.add_argument("--stride-mode", choices=("conv", "pool"),
                        help="block variant: strided conv, or conv + 2x2 max pool")


def block_options(args) -> dict:
    names = {"block_size": args.block_size, "padding_mode": args.padding_mode, "blocking": args.blocking,
             "stride_mode": args.stride_mode}
    return {key: value for key, value in names.items() if value is not None}


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs such as 30,60, got {text!r}") from None


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


# CLI flag -> Hyperparameters field, with the parser for its value.
OVERRIDES = {
    "epochs": ("epochs", _positive(int)), "batch_size": ("batch_size", _positive(int)), "lr": ("lr", _positive(float)),
    "weight_decay": ("weight_decay", _non_negative), "momentum": ("momentum", _non_negative),
    "milestones": ("milestones", _milestones), "label_smoothing": ("label_smoothing", _non_negative),
    "ema_decay": ("ema_decay", _non_negative), "warmup_epochs": ("warmup_epochs", _non_negative),
    "seed": ("seed", int),
}


def add_parser(sub) -> None:
    parser = sub.add_parser("train", help="train a zoo network with a paper's recipe (also under torchrun)",
                            description=__doc__.split("\n\n")[0])
    add_data_options(parser)
    add_model_options(parser, required=False)
    parser.add_argument("--recipe", choices=("fuseconv", "blockconv"),
                        help="the paper's hyperparameters as defaults (default: the network's own paper)")
    for flag, (_, parse) in OVERRIDES.items():
        parser.add_argument("--" + flag.replace("_", "-"), type=parse, help="overrides the recipe")
    parser.add_argument("--amp", action="store_true", help="autocast: bfloat16 on the CPU, float16 on CUDA")
    parser.add_argument("--amp-dtype", choices=("float16", "bfloat16"), help="autocast dtype on CUDA")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (CUDA)")
    parser.add_argument("--finetune-from", metavar="CKPT", help="start from a plain network's checkpoint")
    parser.add_argument("--resume", metavar="CKPT", help="continue a run from its last.pth")
    parser.add_argument("--out", required=True, metavar="DIR", help="writes last.pth, best.pth, metrics.csv, train.log")
    parser.set_defaults(func=run)


def run(args) -> int:
    from fuseops.cli import CliError
    from fuseops.training.data import DataError
    from fuseops.training.trainer import TrainConfig, TrainError, train

    if args.resume and args.finetune_from:
        raise CliError("--resume and --finetune-from exclude each other")
    overrides = {field: getattr(args, flag) for flag, (field, _) in OVERRIDES.items()
                 if getattr(args, flag) is not None}
    config = TrainConfig(
        data=args.data, out=args.out, model=args.model, variant=args.variant or "baseline",
        block_options=block_options(args), dataset=args.dataset, recipe=args.recipe, overrides=overrides,
        img_size=args.img_size, workers=args.workers, amp=args.amp, amp_dtype=args.amp_dtype,
        channels_last=args.channels_last, compile=args.compile, sync_bn=args.sync_bn,
        finetune_from=args.finetune_from, resume=args.resume, device=args.device, progress=not args.no_progress)
    try:
        train(config)
    except (DataError, TrainError, ValueError, TypeError, FileNotFoundError) as error:
        raise CliError(one_line(error)) from None
    return 0


def one_line(error: BaseException) -> str:
    """The message of ``error``; for one re-raised from a DataLoader worker, the original's
    last line (the worker's traceback is in the text)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    last = lines[-1]
    for prefix in ("fuseops.training.data.DataError: ", "DataError: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return lines[0] if len(lines) == 1 else last
