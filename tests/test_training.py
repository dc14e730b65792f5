"""``fuseops train`` and ``fuseops eval``: learning, torchrun, resume, the data layouts,
the recipes, and the one-line errors for bad input.

Datasets are generated per test (tests/training_data.py): 32x32 images whose class is a
colour under noise, so a network learns them in a few epochs.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import training_data  # noqa: E402

from fuseops.models import get_model, save  # noqa: E402
from fuseops.training import recipes  # noqa: E402
from fuseops.training.data import Cifar, DataError  # noqa: E402
from fuseops.training.distributed import ShardSampler  # noqa: E402
from fuseops.training.trainer import TrainConfig, train  # noqa: E402
from fuseops.training.transforms import EvalTransform, TrainTransform  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# SGD at a learning rate this tiny task tolerates; no EMA, so val follows the weights.
FAST = ["--img-size", "32", "--batch-size", "8", "--recipe", "blockconv", "--lr", "0.05", "--no-progress"]


def _fuseops(*args: str, torchrun: int = 0, check: bool = True) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
                "-m", "fuseops"] if torchrun else [sys.executable, "-m", "fuseops"]
    result = subprocess.run([*launcher, *args], capture_output=True, text=True, env=ENV, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _metrics(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(path, weights_only=True)
    raw = checkpoint["meta"]["train_state"]["model"]
    return raw if raw is not None else checkpoint["state_dict"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return training_data.image_folder(tmp_path_factory.mktemp("images"))


def test_torchrun_two_processes_learn_resume_and_eval(folder, tmp_path):
    common = ["train", "--data", str(folder), "--model", "mobilenet_v3_small", "--variant", "half", *FAST]
    full, part = tmp_path / "full", tmp_path / "part"
    # Validation accuracy on this tiny task swings by 20-30 points from epoch to epoch early
    # on; 10 epochs leave a margin above 90% that float-level changes to the kernels keep.
    _fuseops(*common, "--epochs", "10", "--out", str(full), torchrun=2)
    rows = _metrics(full)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 11))
    assert list(rows[0]) == ["epoch", "train_loss", "val_top1", "val_top5", "lr", "seconds"]
    best = max(float(r["val_top1"]) for r in rows)
    assert best >= 90.0, rows
    assert (full / "train.log").read_text().count("epoch") >= 10

    # eval counts each of the 30 val images once and agrees with the training loop.
    result = _fuseops("eval", "--data", str(folder), "--img-size", "32", "--weights", str(full / "best.pth"),
                      "--json", str(tmp_path / "eval.json"), "--no-progress")
    assert json.loads((tmp_path / "eval.json").read_text()) == {"top1": pytest.approx(best, abs=1e-9),
                                                                "top5": 100.0, "images": 30}
    assert f"top-1 {best:.2f}%" in result.stdout

    # Stopped after 3 epochs and resumed: the same weights and figures as the run that went on.
    _fuseops(*common, "--epochs", "3", "--out", str(part), torchrun=2)
    _fuseops("train", "--data", str(folder), "--img-size", "32", "--no-progress", "--epochs", "10",
             "--resume", str(part / "last.pth"), "--out", str(part), torchrun=2)
    resumed, straight = _weights(part / "last.pth"), _weights(full / "last.pth")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    drop_time = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in _metrics(part)] == drop_time


def test_torchrun_exits_cleanly_every_time(folder, tmp_path):
    # gloo ranks that left at different moments used to abort at exit on these machines.
    for attempt in range(3):
        result = _fuseops("train", "--data", str(folder), "--model", "mobilenet_v3_small", *FAST, "--epochs", "1",
                          "--out", str(tmp_path / str(attempt)), torchrun=2, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "terminate called" not in result.stderr


def test_torchrun_with_more_processes_than_val_images(tmp_path):
    # 3 processes, 2 val images: one rank scores nothing and must still join every collective.
    data = training_data.image_folder(tmp_path / "data", classes=2, train=12, val=2)
    _fuseops("train", "--data", str(data), "--model", "mobilenet_v3_small", *FAST, "--epochs", "1",
             "--out", str(tmp_path / "run"), torchrun=3)
    assert len(_metrics(tmp_path / "run")) == 1


def _config(folder: Path, out: Path, **changes) -> TrainConfig:
    base = {"data": str(folder), "out": str(out), "model": "mobilenet_v2", "variant": "half", "img_size": 32,
            "recipe": "blockconv", "progress": False,
            "overrides": {"epochs": 2, "batch_size": 16, "lr": 0.05, "ema_decay": 0.9}}
    base.update(changes)
    return TrainConfig(**base)


def test_single_process_resume_with_ema_matches(folder, tmp_path):
    straight = train(_config(folder, tmp_path / "a", overrides={"epochs": 3, "batch_size": 16, "lr": 0.05,
                                                                 "ema_decay": 0.9}))
    train(_config(folder, tmp_path / "b", overrides={"epochs": 1, "batch_size": 16, "lr": 0.05, "ema_decay": 0.9}))
    rest = train(TrainConfig(data=str(folder), out=str(tmp_path / "b"), img_size=32, progress=False,
                             resume=str(tmp_path / "b" / "last.pth"), overrides={"epochs": 3}))
    assert [r["epoch"] for r in rest] == [2, 3]
    assert [r["train_loss"] for r in rest] == [r["train_loss"] for r in straight[1:]]
    a = torch.load(tmp_path / "a" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pth", weights_only=True)
    # The EMA weights (what was evaluated and saved) and the raw weights both match.
    assert [g["weight_decay"] for g in b["meta"]["train_state"]["optimizer"]["param_groups"]] == [1e-4]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert all(torch.equal(v, b["meta"]["train_state"]["model"][k])
               for k, v in a["meta"]["train_state"]["model"].items())


def test_resume_applies_overridden_optimizer_settings(folder, tmp_path):
    train(_config(folder, tmp_path, overrides={"epochs": 1, "batch_size": 16, "lr": 0.05, "ema_decay": 0.0}))
    train(TrainConfig(data=str(folder), out=str(tmp_path), img_size=32, progress=False,
                      resume=str(tmp_path / "last.pth"),
                      overrides={"epochs": 2, "weight_decay": 0.0, "momentum": 0.5}))
    checkpoint = torch.load(tmp_path / "last.pth", weights_only=True)
    groups = checkpoint["meta"]["train_state"]["optimizer"]["param_groups"]
    assert [(g["weight_decay"], g["momentum"]) for g in groups] == [(0.0, 0.5)]
    assert checkpoint["meta"]["hyperparameters"]["momentum"] == 0.5


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_layouts_train_and_eval(tmp_path, name):
    root = training_data.cifar(tmp_path / "data", name)
    out = tmp_path / "run"
    _fuseops("train", "--data", str(root), "--dataset", name, "--model", "resnet18", "--variant", "block",
             "--block-size", "8", *FAST, "--epochs", "2", "--out", str(out))
    rows = _metrics(out)
    assert len(rows) == 2
    result = _fuseops("eval", "--data", str(root), "--dataset", name, "--img-size", "32", "--weights",
                      str(out / "last.pth"), "--no-progress")
    assert f"top-1 {float(rows[-1]['val_top1']):.2f}%" in result.stdout
    assert "(30 images)" in result.stdout


def test_amp_and_channels_last_train(folder, tmp_path):
    rows = train(_config(folder, tmp_path, amp=True, channels_last=True, workers=1))
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)


def test_finetune_from_a_plain_checkpoint(folder, tmp_path):
    plain = get_model("resnet18", num_classes=3)
    save(plain, tmp_path / "plain.pt")
    out = tmp_path / "block"
    train(_config(folder, out, model="resnet18", variant="block", block_options={"block_size": 8},
                  finetune_from=str(tmp_path / "plain.pt"),
                  overrides={"epochs": 1, "batch_size": 16, "lr": 0.0}))
    # lr 0 and no EMA: the saved block network holds the plain network's weights (BN statistics aside).
    saved = torch.load(out / "last.pth", weights_only=True)["state_dict"]
    for key, value in plain.state_dict().items():
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(saved[key], value), key
    log = (out / "train.log").read_text()
    assert f"{len(plain.state_dict())} of {len(plain.state_dict())} tensors copied" in log
    # Fine-tuning reads the blockconv recipe's fine-tune row.
    assert recipes.recipe("blockconv", "resnet18", finetune=True).epochs == 30


# --- bad input: one line on stderr, exit code 2 ----------------------------------------


def _error(*args: str) -> str:
    result = _fuseops(*args, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 or result.stderr.startswith("usage:"), result.stderr
    return lines[-1]


def test_bad_input_gets_one_line(folder, tmp_path):
    run = ["train", "--model", "mobilenet_v3_small", *FAST, "--epochs", "1", "--out", str(tmp_path / "o")]
    assert "no folder" in _error(*run, "--data", str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    (empty / "val" / "a").mkdir(parents=True)
    assert "holds no .png/.jpg/.jpeg images" in _error(*run, "--data", str(empty))
    broken = tmp_path / "broken"
    training_data.image_folder(broken, train=12, val=6)
    bad = broken / "train" / "class_1" / "0001.png"
    bad.write_bytes(b"not an image")
    for workers in ("0", "1"):
        message = _error(*run, "--data", str(broken), "--workers", workers)
        assert "cannot read image" in message and "0001.png" in message, message
    assert "variant must be one of" in _error(*run, "--data", str(folder), "--variant", "full_hybrid_x")
    assert "--sync-bn needs CUDA" in _error(*run, "--data", str(folder), "--sync-bn")
    assert "bfloat16" in _error(*run, "--data", str(folder), "--amp", "--amp-dtype", "float16", "--device", "cpu")
    assert "exclude each other" in _error(*run, "--data", str(folder), "--resume", "x", "--finetune-from", "y")
    assert "--model is required" in _error("train", "--data", str(folder), "--out", str(tmp_path / "p"))
    one_class = tmp_path / "one"
    training_data.image_folder(one_class, classes=1, train=4, val=2)
    assert "at least 2 classes" in _error(*run, "--data", str(one_class))
    assert "not a torch checkpoint" in _error("eval", "--data", str(folder), "--weights", str(folder / "train"
                                                                                             / "class_0" / "0000.png"))
    assert "milestones" in _error(*run, "--data", str(folder), "--milestones", "ten")
    assert "must be positive" in _error(*run, "--data", str(folder), "--epochs", "0")
    plain = tmp_path / "plain.pt"
    save(get_model("mobilenet_v3_small", num_classes=3), plain)
    assert "not a checkpoint written by fuseops train" in _error(
        "train", "--data", str(folder), "--resume", str(plain), "--out", str(tmp_path / "q"))
    assert "does not exist" in _error("eval", "--data", str(folder), "--weights", str(tmp_path / "none.pt"))
    assert "1000 classes, the data 3" in _error(
        "eval", "--data", str(folder), "--weights", str(_saved(tmp_path / "k.pt")))


def _saved(path: Path) -> Path:
    save(get_model("mobilenet_v3_small"), path)
    return path


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickles_cannot_run_code(tmp_path):
    root = training_data.cifar(tmp_path, "cifar100")
    marker = tmp_path / "ran"
    payload = _RunsCode()
    payload.marker = marker
    with open(root / "cifar-100-python" / "train", "wb") as handle:
        pickle.dump({b"data": payload, b"fine_labels": [0]}, handle)
    with pytest.raises(DataError, match=r"refusing to load (posix|os)\.system"):
        Cifar(root, "cifar100", train=True)
    assert not marker.exists()


# --- pieces -------------------------------------------------------------------------------


def test_recipes_state_the_papers_tables():
    fuse = recipes.recipe("fuseconv", "mobilenet_v2", finetune=False)
    assert (fuse.optimizer, fuse.lr, fuse.weight_decay) == ("rmsprop", 0.016, 1e-5)
    assert (fuse.epochs, fuse.batch_size) == (350, 128)
    assert (fuse.rmsprop_alpha, fuse.rmsprop_eps, fuse.momentum) == (0.9, 1e-3, 0.9)
    assert (fuse.label_smoothing, fuse.ema_decay, fuse.seed, fuse.bn_momentum) == (0.1, 0.9999, 1995, 0.01)
    # x0.97 every 2.4 epochs
    assert recipes.lr_at(fuse, 2.3) == 0.016
    assert recipes.lr_at(fuse, 2.4) == pytest.approx(0.016 * 0.97)
    assert recipes.lr_at(fuse, 10.0) == pytest.approx(0.016 * 0.97 ** 4)
    vgg = recipes.recipe("blockconv", "vgg16", finetune=False)
    assert (vgg.epochs, vgg.batch_size, vgg.lr) == (105, 256, 0.01)
    assert (vgg.weight_decay, vgg.milestones) == (5e-4, (30, 60, 90))
    assert recipes.lr_at(vgg, 29.99) == 0.01
    assert recipes.lr_at(vgg, 60.0) == pytest.approx(0.0001)
    mobile = recipes.recipe("blockconv", "mobilenet_v1", finetune=True)
    assert (mobile.epochs, mobile.lr, mobile.weight_decay, mobile.milestones) == (50, 0.0001, 5e-5, ())
    warm = recipes.Hyperparameters(**{**vars(vgg), "warmup_epochs": 2.0})
    assert recipes.lr_at(warm, 1.0) == pytest.approx(0.005)
    assert recipes.default_recipe("resnet18", "baseline") == "blockconv"
    assert recipes.default_recipe("mobilenet_v1", "block") == "blockconv"
    assert recipes.default_recipe("mobilenet_v1", "half") == "fuseconv"


def test_augmentation_depends_on_seed_epoch_and_index_only():
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    transform = TrainTransform(32, seed=7, cifar=False)
    first = transform(image, 3)
    assert first.shape == (3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(TrainTransform(32, seed=7, cifar=False)(image, 3), first)
    assert not torch.equal(transform(image, 4), first)
    transform.set_epoch(1)
    assert not torch.equal(transform(image, 3), first)
    assert TrainTransform(48, seed=7, cifar=True)(image[:, :32, :32], 0).shape == (3, 48, 48)


def test_eval_transform_crops_the_centre():
    # A constant picture stays constant; a marked centre survives the crop, a marked border does not.
    image = torch.full((3, 64, 80), 100, dtype=torch.uint8)
    out = EvalTransform(32, cifar=False)(image, 0)
    expected = (100 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(out, expected.view(3, 1, 1).expand(3, 32, 32), rtol=0, atol=1e-5)
    image[:, :, :4] = 255
    assert torch.equal(EvalTransform(32, cifar=False)(image, 0), out)


def test_shards_cover_each_index_once():
    for length, world in ((30, 2), (31, 4), (3, 4)):
        shards = [list(ShardSampler(length, rank, world)) for rank in range(world)]
        assert sorted(i for shard in shards for i in shard) == list(range(length))
