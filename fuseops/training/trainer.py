"""Train a zoo network on an image folder or CIFAR, on one process or under torchrun; evaluate one.

Only rank 0 writes, into the output folder: ``last.pth`` and ``best.pth`` (fuseops
checkpoints, :func:`fuseops.models.save`; their weights are the evaluated ones, the EMA's
when the recipe keeps one), ``metrics.csv`` (one row per epoch) and ``train.log``.  Each
checkpoint's ``meta`` carries what a resume needs: the hyperparameters, the raw weights,
optimizer, EMA, loss-scaler and every rank's RNG states, and the epoch.  The learning rate
is a function of the epoch alone (:func:`~fuseops.training.recipes.lr_at`) and augmentation
a function of (seed, epoch, index), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import random
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fuseops.models import get_model, save
from fuseops.models.checkpoint_file import FORMAT, load_file
from fuseops.training import data as datasets
from fuseops.training import distributed, recipes
from fuseops.training.loop import Precision, build_ema, build_optimizer, evaluate, train_epoch
from fuseops.training.transforms import EvalTransform, TrainTransform

METRICS_COLUMNS = ("epoch", "train_loss", "val_top1", "val_top5", "lr", "seconds")
log = logging.getLogger("fuseops.train")


class TrainError(ValueError):
    """A problem with the options or a checkpoint: reported as one line."""


@dataclasses.dataclass
class TrainConfig:
    data: str
    out: str
    model: str | None = None
    variant: str = "baseline"
    block_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str | None = None  # None: ImageFolder; "cifar10" | "cifar100"
    recipe: str | None = None  # None: the network's own paper
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # Hyperparameters fields
    img_size: int = 224
    workers: int = 0
    amp: bool = False
    amp_dtype: str | None = None  # "float16" | "bfloat16"; None: bf16 on CPU, fp16 on CUDA
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    finetune_from: str | None = None
    resume: str | None = None
    device: str | None = None
    progress: bool = True


def train(config: TrainConfig) -> list[dict[str, float]]:
    """Run (or resume) training; the metrics rows of the epochs this call ran."""
    context = distributed.setup(config.device)
    try:
        rows = _train(config, context)
    except BaseException:
        if context.distributed and dist.is_initialized():
            dist.destroy_process_group()  # no barrier: the other ranks may never reach it
        raise
    distributed.teardown(context)
    return rows


def _train(config: TrainConfig, context: distributed.Context) -> list[dict[str, float]]:
    resume = _read_resume(config.resume) if config.resume else None
    name, variant, options = _network(config, resume)
    hyper = _hyperparameters(config, name, variant, resume)
    _seed_everything(hyper.seed + context.rank)
    out = Path(config.out)
    if context.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _log_to(out / "train.log")

    cifar = config.dataset is not None
    train_transform = TrainTransform(config.img_size, hyper.seed, cifar=cifar)
    train_set, val_set, classes = datasets.open_splits(config.data, config.dataset, train_transform,
                                                       EvalTransform(config.img_size, cifar=cifar))
    if len(classes) < 2:
        raise TrainError(f"the data has {len(classes)} class ({classes}); classification needs at least 2 classes")
    model = get_model(name, variant=variant, num_classes=len(classes), **options)
    if config.finetune_from:
        _finetune(model, name, len(classes), options, config.finetune_from)
    if hyper.bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = hyper.bn_momentum
    precision = _precision(config, context.device)
    model.to(context.device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.sync_bn:
        if context.device.type != "cuda":
            raise TrainError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU implementation)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, hyper)
    ema = build_ema(model, hyper.ema_decay)
    scaler = torch.amp.GradScaler("cuda") if precision.dtype == torch.float16 else None
    start_epoch, best = 0, -1.0
    if resume is not None:
        start_epoch, best = _restore(resume, model, optimizer, ema, scaler, context)
        _apply_hyperparameters(optimizer, hyper)  # the optimizer state carries the old run's values

    runner: nn.Module = model
    if context.distributed:
        runner = nn.parallel.DistributedDataParallel(
            model, device_ids=[context.device.index] if context.device.type == "cuda" else None)
    if config.compile:
        runner = torch.compile(runner)
    # Evaluated outside the DDP wrapper: its forward broadcasts buffers (a collective), which
    # a rank with an empty validation shard would never join.  The buffers are synced from
    # rank 0 explicitly before each evaluation instead (BatchNorm statistics, and the EMA's,
    # drift apart per rank within an epoch), so every rank scores the same model.
    evaluated = ema.module if ema is not None else model

    train_sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=context.world_size,
                                                        rank=context.rank, shuffle=True, seed=hyper.seed)
    if len(train_sampler) < hyper.batch_size and len(train_sampler) < 2:
        raise TrainError(f"the train split has {len(train_set)} images: too few for {context.world_size} processes")
    loader_options = {"num_workers": config.workers, "pin_memory": context.device.type == "cuda"}
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=hyper.batch_size, sampler=train_sampler,
        drop_last=len(train_sampler) > hyper.batch_size, **loader_options)
    val_loader = torch.utils.data.DataLoader(
        val_set, batch_size=hyper.batch_size,
        sampler=distributed.ShardSampler(len(val_set), context.rank, context.world_size), **loader_options)
    if context.is_main:
        log.info("training %s (%s) on %d train / %d val images, %d classes, %d process(es), epochs %d..%d, %s",
                 name, variant, len(train_set), len(val_set), len(classes), context.world_size, start_epoch + 1,
                 hyper.epochs, dataclasses.asdict(hyper))
        _keep_metrics(out / "metrics.csv", start_epoch)

    rows = []
    for epoch in range(start_epoch, hyper.epochs):
        began = time.perf_counter()
        train_transform.set_epoch(epoch)
        train_sampler.set_epoch(epoch)
        bar = _bar(config.progress, context, f"epoch {epoch + 1}/{hyper.epochs}")
        loss, lr = train_epoch(runner, train_loader, optimizer, hyper, epoch, context, precision, ema=ema,
                               scaler=scaler, progress=bar)
        distributed.broadcast_buffers(context, evaluated)
        top1, top5, _ = evaluate(evaluated, val_loader, context, precision)
        row = {"epoch": epoch + 1, "train_loss": loss, "val_top1": top1, "val_top5": top5, "lr": lr,
               "seconds": time.perf_counter() - began}
        rows.append(row)
        improved = top1 > best
        best = max(best, top1)
        rng = _gather_rng(context)
        if context.is_main:
            _write_checkpoint(out, model, ema, optimizer, scaler, hyper, row, best, rng, improved)
            _append_metrics(out / "metrics.csv", row)
            log.info("epoch %d: loss %.4f, val top-1 %.2f%%, top-5 %.2f%%, lr %.4g, %.1f s%s", row["epoch"], loss,
                     top1, top5, lr, row["seconds"], " (best)" if improved else "")
    return rows


def evaluate_checkpoint(*, data: str, weights: str, model: str | None = None, variant: str | None = None,
                        block_options: Mapping[str, Any] | None = None, dataset: str | None = None,
                        img_size: int = 224, batch_size: int = 128, workers: int = 0,
                        device: str | None = None, progress: bool = True) -> dict[str, float]:
    """{"top1": %, "top5": %, "images": n} of a checkpoint on the val split, on one process."""
    from fuseops.models import load

    context = distributed.Context(0, 1, 0, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    cifar = dataset is not None
    _, val_set, classes = datasets.open_splits(data, dataset, TrainTransform(img_size, 0, cifar=cifar),
                                               EvalTransform(img_size, cifar=cifar))
    if model is None:
        network = load(weights)
        if network.fuseops_spec["num_classes"] != len(classes):
            raise TrainError(f"{weights!r} has {network.fuseops_spec['num_classes']} classes, the data "
                             f"{len(classes)}")
    else:
        network = get_model(model, variant=variant or "baseline", num_classes=len(classes), weights=weights,
                            **dict(block_options or {}))
    loader = torch.utils.data.DataLoader(val_set, batch_size=batch_size, num_workers=workers)
    top1, top5, seen = evaluate(network.to(context.device), loader, context, Precision(None),
                                progress=_bar(progress, context, "eval"))
    return {"top1": top1, "top5": top5, "images": seen}


# --- pieces -----------------------------------------------------------------------------


def _read_resume(path: str) -> dict:
    checkpoint = load_file(path)
    if checkpoint.get("format") != FORMAT or "train_state" not in checkpoint.get("meta", {}):
        raise TrainError(f"--resume {path!r} is not a checkpoint written by fuseops train")
    return checkpoint


def _network(config: TrainConfig, resume: dict | None) -> tuple[str, str, dict]:
    if resume is None:
        if config.model is None:
            raise TrainError("--model is required (or --resume a checkpoint)")
        return config.model, config.variant, dict(config.block_options)
    spec = resume["model"]
    if config.model is not None and (config.model, config.variant) != (spec["name"], spec["variant"]):
        raise TrainError(f"--resume holds {spec['name']} ({spec['variant']}), not {config.model} ({config.variant})")
    return spec["name"], spec["variant"], dict(spec["options"])


def _hyperparameters(config: TrainConfig, name: str, variant: str, resume: dict | None) -> recipes.Hyperparameters:
    if resume is not None:
        saved = dict(resume["meta"]["hyperparameters"])
        saved["milestones"] = tuple(saved["milestones"])
        base = recipes.Hyperparameters(**saved)
    else:
        base = recipes.recipe(config.recipe or recipes.default_recipe(name, variant), name,
                              finetune=config.finetune_from is not None)
    unknown = set(config.overrides) - {field.name for field in dataclasses.fields(recipes.Hyperparameters)}
    if unknown:
        raise TrainError(f"unknown hyperparameters {sorted(unknown)}")
    return dataclasses.replace(base, **config.overrides)


def _precision(config: TrainConfig, device: torch.device) -> Precision:
    if not config.amp:
        if config.amp_dtype is not None:
            raise TrainError("--amp-dtype needs --amp")
        return Precision(None, config.channels_last)
    name = config.amp_dtype or ("float16" if device.type == "cuda" else "bfloat16")
    if device.type == "cpu" and name != "bfloat16":
        raise TrainError(f"--amp on the CPU runs bfloat16, not {name}")
    return Precision(getattr(torch, name), config.channels_last)


def _finetune(model: nn.Module, name: str, num_classes: int, options: dict, path: str) -> None:
    """Start from a plain network's checkpoint, as BlockConv fine-tunes.

    The plain network (with the data's class count) loads strictly; every tensor whose
    name and shape the target shares is copied.  For a block variant that is all of them
    (to_block keeps every weight); for a FuSe variant the FuSe convs (and, for "full", the
    1x1 convs after them) start fresh.
    """
    plain = get_model(name, num_classes=num_classes, weights=path)
    source, target = plain.state_dict(), model.state_dict()
    shared = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    target.update(shared)
    model.load_state_dict(target)
    log.info("fine-tuning from %s: %d of %d tensors copied from the plain network", path, len(shared), len(target))


def _apply_hyperparameters(optimizer: torch.optim.Optimizer, hyper: recipes.Hyperparameters) -> None:
    """The run's weight decay and momentum (and RMSProp's alpha and eps) in every group."""
    for group in optimizer.param_groups:
        group["weight_decay"] = hyper.weight_decay
        group["momentum"] = hyper.momentum
        if "alpha" in group:
            group["alpha"], group["eps"] = hyper.rmsprop_alpha, hyper.rmsprop_eps


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _gather_rng(context: distributed.Context) -> list[dict[str, Any]]:
    """Every rank's RNG states (torch CPU, CUDA, Python), collected on all ranks."""
    mine = {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(context.device) if context.device.type == "cuda" else None}
    if not context.distributed:
        return [mine]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, mine)
    return gathered


def _restore(checkpoint: dict, model: nn.Module, optimizer, ema, scaler, context) -> tuple[int, float]:
    meta = checkpoint["meta"]
    state = meta["train_state"]
    model.load_state_dict(state["model"] if state["model"] is not None else checkpoint["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    if (ema is None) != (state["ema"] is None):
        raise TrainError("--resume: the checkpoint and the run disagree on the weight EMA (--ema-decay)")
    if ema is not None:
        ema.load_state_dict(state["ema"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    if len(rng) == context.world_size:  # a different world size draws fresh per-rank streams
        mine = rng[context.rank]
        torch.set_rng_state(mine["torch"])
        random.setstate(_as_tuple(mine["python"]))
        if mine["cuda"] is not None and context.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], context.device)
    return int(meta["epoch"]), float(meta["best_top1"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _write_checkpoint(out: Path, model, ema, optimizer, scaler, hyper, row, best, rng, improved) -> None:
    weights = ema.module if ema is not None else model
    train_state = {"model": model.state_dict() if ema is not None else None, "optimizer": optimizer.state_dict(),
                   "ema": ema.state_dict() if ema is not None else None,
                   "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng}
    partial = out / "last.pth.partial"
    save(weights, partial, epoch=row["epoch"], metrics=row, best_top1=best,
         hyperparameters=dataclasses.asdict(hyper), train_state=train_state)
    os.replace(partial, out / "last.pth")  # a crash mid-write leaves the previous last.pth
    if improved:
        shutil.copyfile(out / "last.pth", out / "best.pth.partial")
        os.replace(out / "best.pth.partial", out / "best.pth")


def _keep_metrics(path: Path, epochs_done: int) -> None:
    """Start metrics.csv afresh, or keep the rows of the epochs a resumed checkpoint holds."""
    rows = []
    if epochs_done and path.exists():
        with open(path, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) <= epochs_done]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, METRICS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _append_metrics(path: Path, row: dict[str, float]) -> None:
    with open(path, "a", newline="") as handle:
        csv.DictWriter(handle, METRICS_COLUMNS).writerow(
            {**row, **{k: f"{row[k]:.6g}" for k in ("train_loss", "val_top1", "val_top5", "lr", "seconds")}})


def _log_to(path: Path) -> None:
    log.setLevel(logging.INFO)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    console = logging.StreamHandler(sys.stdout)  # stderr keeps errors alone
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)


def _bar(progress: bool, context: distributed.Context, description: str):
    if not (progress and context.is_main):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return lambda iterable: tqdm(iterable, desc=description, unit="batch", leave=False, dynamic_ncols=True)
