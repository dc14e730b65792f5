"""One training epoch and one evaluation pass, on one process or many.

Both take the model as the caller wrapped it (DistributedDataParallel, ``torch.compile``)
and report figures already reduced over all ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fuseops.models.checkpoints import unwrap_model
from fuseops.training.distributed import Context, sum_across
from fuseops.training.recipes import Hyperparameters, lr_at


@dataclasses.dataclass(frozen=True)
class Precision:
    """Autocast settings: ``dtype`` None runs in float32; float16 on CUDA adds loss scaling."""

    dtype: torch.dtype | None
    channels_last: bool = False

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def prepare(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        images = images.to(device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


def build_optimizer(model: nn.Module, h: Hyperparameters) -> torch.optim.Optimizer:
    if h.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=h.lr, alpha=h.rmsprop_alpha, eps=h.rmsprop_eps,
                                   weight_decay=h.weight_decay, momentum=h.momentum)
    return torch.optim.SGD(model.parameters(), lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)


def build_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the weights and BatchNorm statistics, or None."""
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, h: Hyperparameters, epoch: int,
                context: Context, precision: Precision, *, ema=None, scaler=None,
                progress: Callable | None = None) -> tuple[float, float]:
    """Train one epoch; (mean loss over all ranks' samples, the last learning rate)."""
    model.train()
    total, count, lr = 0.0, 0, h.lr
    batches = progress(loader) if progress else loader
    steps = len(loader)
    for step, (images, labels) in enumerate(batches):
        lr = lr_at(h, epoch + step / steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, labels = precision.prepare(images, context.device), labels.to(context.device)
        with precision.autocast(context.device):
            loss = F.cross_entropy(model(images), labels, label_smoothing=h.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if ema is not None:
            ema.update_parameters(unwrap_model(model))
        total += float(loss.detach()) * len(labels)
        count += len(labels)
        if progress is not None and hasattr(batches, "set_postfix"):
            batches.set_postfix(loss=f"{float(loss):.3f}", lr=f"{lr:.3g}")
    total, count = sum_across(context, [total, count])
    return total / max(count, 1), lr


@torch.no_grad()
def evaluate(model: nn.Module, loader, context: Context, precision: Precision,
             progress: Callable | None = None) -> tuple[float, float, int]:
    """(top-1 %, top-5 %, images) over every rank's shard of the val set."""
    model.eval()
    top1 = top5 = seen = 0
    for images, labels in progress(loader) if progress else loader:
        images, labels = precision.prepare(images, context.device), labels.to(context.device)
        with precision.autocast(context.device):
            logits = model(images)
        ranked = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        hits = ranked == labels[:, None]
        top1 += int(hits[:, 0].sum())
        top5 += int(hits.any(dim=1).sum())
        seen += len(labels)
    top1, top5, seen = sum_across(context, [top1, top5, seen])
    seen = int(seen)
    return 100.0 * top1 / max(seen, 1), 100.0 * top5 / max(seen, 1), seen

