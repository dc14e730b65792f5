"""Checkpoints: the papers' repositories' networks load and reproduce; fuseops' own format
round-trips; unsafe or mismatched files are refused.

The original networks are represented by manifests (tests/seed_checkpoints): key names and
shapes in the original state_dict order, and the logits the original code computed in
float64 with every tensor filled by a function of its key name.  Rebuilding those tensors
here and loading them through fuseops must give the same logits.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fuseops
from fuseops.models import checkpoint_info, get_model, load, save

sys.path.insert(0, str(Path(__file__).parent / "seed_checkpoints"))
import seed_weights  # noqa: E402

MANIFESTS = seed_weights.list_manifests()


def _original(stem: str) -> tuple[dict, dict[str, torch.Tensor]]:
    manifest = seed_weights.read_manifest(stem)
    return manifest, seed_weights.state_dict_from_keys(manifest["keys"])


def _build(manifest: dict, weights, **kwargs) -> nn.Module:
    return get_model(manifest["network"], variant=manifest["variant"], weights=weights,
                     **manifest["options"], **kwargs)


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()


def test_manifests_cover_both_repositories():
    # 5 networks x 5 variants of FuSeConv; 4 block networks x 3 padding modes of BlockConv.
    assert sum(stem.startswith("fuseconv-") for stem in MANIFESTS) == 25
    assert sum(stem.startswith("blockconv-") for stem in MANIFESTS) == 12


@pytest.mark.parametrize("stem", MANIFESTS)
def test_original_network_reproduces(stem):
    manifest, state = _original(stem)
    model = _build(manifest, state).eval()
    reference = seed_weights.decode_floats(manifest["logits_float64"], manifest["logits_shape"])
    with torch.no_grad():
        float32 = model(seed_weights.seed_input().float())
        float64 = model.double()(seed_weights.seed_input())
    assert float32.dtype == torch.float32
    assert _rel(float32, reference) < 1e-5
    # In float64 the two codes compute the same function: only summation order differs.
    assert _rel(float64, reference) < 1e-10


# --- layouts and prefixes -------------------------------------------------------------

SMALL = "fuseconv-mobilenet_v3_small-half"


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + key: value for key, value in state.items()}


@pytest.mark.parametrize("layout", ["bare", "state_dict", "net", "model", "module", "compiled"])
def test_layouts_load_the_same_weights(layout):
    manifest, state = _original(SMALL)
    wrapped = {
        "bare": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "net": {"net": state, "acc": 71.2, "epoch": 349},
        "model": {"model": state, "ema": {k: v + 1 for k, v in state.items()}},
        "module": {"state_dict": _prefixed(state, "module.")},
        "compiled": _prefixed(state, "_orig_mod."),
    }[layout]
    reference = _build(manifest, state)
    assert _same_weights(_build(manifest, wrapped), reference)


def test_ema_weights_are_taken_on_request():
    manifest, state = _original(SMALL)
    ema = {k: v * 2 if v.is_floating_point() else v for k, v in state.items()}
    checkpoint = {"model": state, "ema": _prefixed(ema, "module.")}
    assert _same_weights(_build(manifest, checkpoint, ema=True), _build(manifest, ema))
    assert _same_weights(_build(manifest, checkpoint), _build(manifest, state))
    with pytest.raises(ValueError, match="no 'ema' entry"):
        _build(manifest, {"state_dict": state}, ema=True)
    with pytest.raises(TypeError, match="ema must be a bool"):
        _build(manifest, state, ema="yes")


def test_vgg_features_module_prefix():
    # BlockConv wraps VGG's features alone in DataParallel: keys read features.module.0.weight.
    manifest, state = _original("blockconv-vgg16-constant")
    inner = {key.replace("features.", "features.module.", 1): value for key, value in state.items()}
    assert any(".module." in key for key in inner)
    assert _same_weights(_build(manifest, {"state_dict": inner}), _build(manifest, state))


def test_blockconv_checkpoint_file_with_optimizer_class(tmp_path):
    # BlockConv's save_checkpoint pickles type(optimizer); exactly that class is allowed.
    manifest, state = _original("blockconv-mobilenet_v1-replicate")
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"epoch": 5, "arch": "block_mobilenet", "state_dict": _prefixed(state, "module."),
                "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.1}]},
                "optimizer_type": torch.optim.SGD, "extras": {"best_top1": 71.9, "best_epoch": 4}}, path)
    assert _same_weights(_build(manifest, path), _build(manifest, state))
    assert _same_weights(_build(manifest, str(path)), _build(manifest, state))


# --- safety ---------------------------------------------------------------------------

_side_effect = Path(os.environ.get("TMPDIR", "/tmp")) / "fuseops-checkpoint-test-ran-code"


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {_side_effect}",))


def test_a_file_that_would_run_code_is_refused(tmp_path):
    _side_effect.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    manifest, state = _original(SMALL)
    torch.save({"state_dict": state, "payload": _RunsCode()}, path)
    with pytest.raises(ValueError, match=r"holds objects of \['(posix|os)\.system'\]"):
        _build(manifest, path)
    assert not _side_effect.exists()


@pytest.mark.parametrize("payload, name", [
    (argparse.Namespace(lr=0.1), "argparse.Namespace"),
    (torch.optim.Adam, "torch.optim.adam.Adam"),  # only SGD, the class BlockConv pickles
])
def test_other_objects_are_refused_by_name(tmp_path, payload, name):
    path = tmp_path / "ckpt.pt"
    manifest, state = _original(SMALL)
    torch.save({"state_dict": state, "extra": payload}, path)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        _build(manifest, path)


def test_unreadable_and_missing_files(tmp_path):
    manifest, _ = _original(SMALL)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(64))
    with pytest.raises(ValueError, match="junk.pt"):
        _build(manifest, junk)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        _build(manifest, tmp_path / "nothing.pt")
    with pytest.raises(TypeError, match="weights must be a path or a dict"):
        _build(manifest, 3)
    with pytest.raises(ValueError, match=r"cannot find the weights.*\['acc', 'epoch'\]"):
        _build(manifest, {"epoch": 1, "acc": 2.0})
    with pytest.raises(ValueError, match="not a state_dict of tensors"):
        _build(manifest, {"state_dict": {"a": 1}})


# --- mismatches -----------------------------------------------------------------------


def test_other_variant_is_refused_naming_keys():
    manifest, state = _original("fuseconv-mobilenet_v2-half")
    with pytest.raises(ValueError, match=r"'mobilenet_v2' variant 'full': tensor 6 of the checkpoint, "
                                         r"'features\.1\.conv2_h\.weight' \(16, 1, 1, 3\), does not match the "
                                         r"model's 'features\.1\.conv\.0\.conv\.weight_row' \(32, 1, 1, 3\)"):
        get_model("mobilenet_v2", variant="full", weights=state)
    with pytest.raises(ValueError, match=r"variant 'half_hybrid': tensor 6 of the checkpoint, "
                                         r"'features\.1\.conv1\.weight' \(32, 32, 1, 1\)"):
        get_model("mobilenet_v2", variant="half_hybrid", weights=state)


def test_other_network_and_class_count_are_refused():
    manifest, state = _original("fuseconv-mobilenet_v3_small-half")
    with pytest.raises(ValueError, match="'mobilenet_v3_large' variant 'half'"):
        get_model("mobilenet_v3_large", variant="half", weights=state)
    with pytest.raises(ValueError, match=r"\(10, 1280\)"):
        get_model("mobilenet_v3_small", variant="half", num_classes=10, weights=state)


def test_one_tensor_short_names_it():
    manifest, state = _original("fuseconv-mobilenet_v1-half")
    keys = list(state)
    short = {k: v for k, v in state.items() if k != keys[-1]}
    with pytest.raises(ValueError, match=r"241 tensors, the model 242.*first unmatched key is 'classifier\.2\.bias'"):
        get_model("mobilenet_v1", variant="half", weights=short)


def test_zoo_named_checkpoint_reports_missing_and_unexpected_keys():
    model = get_model("mobilenet_v2", variant="half")
    state = dict(model.state_dict())
    state["features.1.extra.weight"] = state.pop("features.1.conv.1.weight")
    with pytest.raises(ValueError, match=r"missing keys \['features\.1\.conv\.1\.weight'\].*"
                                         r"unexpected keys \['features\.1\.extra\.weight'\]"):
        get_model("mobilenet_v2", variant="half", weights=state)
    state = dict(model.state_dict())
    state["classifier.2.bias"] = torch.zeros(7)
    with pytest.raises(ValueError, match=r"'classifier\.2\.bias' has shape \(7,\) in the checkpoint, \(1000,\)"):
        get_model("mobilenet_v2", variant="half", weights=state)


def test_failed_load_leaves_the_model_untouched():
    from fuseops.models.checkpoints import load_weights

    model = get_model("mobilenet_v2", variant="half")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, state = _original("fuseconv-mobilenet_v2-half")
    broken = dict(state)
    broken[list(state)[-1]] = torch.zeros(3)  # the very last tensor is wrong
    with pytest.raises(ValueError):
        load_weights(model, broken, name="mobilenet_v2", variant="half")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- fuseops' own format --------------------------------------------------------------


@pytest.mark.parametrize("name, variant, options", [
    ("mobilenet_v2", "half", {}),
    ("resnet18", "block", {"block_size": 16, "padding_mode": "reflect", "stride_mode": "pool"}),
])
def test_save_and_load_round_trip(tmp_path, name, variant, options):
    model = get_model(name, variant=variant, num_classes=10, **options)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.05)
    path = tmp_path / "model.pt"
    save(model, path, epoch=7, top1=[71.5, 90.1], note="run a", lr_schedule={"gamma": 0.97})
    rebuilt = load(path)
    assert rebuilt.fuseops_spec == model.fuseops_spec
    assert _same_weights(rebuilt, model)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x), rtol=0, atol=0)
    info = checkpoint_info(path)
    assert info["meta"] == {"epoch": 7, "top1": [71.5, 90.1], "note": "run a", "lr_schedule": {"gamma": 0.97}}
    assert info["fuseops_version"] == fuseops.__version__
    assert info["model"]["options"] == model.fuseops_spec["options"]
    # Plain torch reads it without any allow-list: nothing but tensors and plain values.
    raw = torch.load(path, weights_only=True)
    assert raw["model"]["name"] == name
    # And get_model takes it when asked for the same network.
    same = get_model(name, variant=variant, num_classes=10, weights=path, **options)
    assert _same_weights(same, model)
    with pytest.raises(ValueError, match="a fuseops checkpoint holds one set of weights"):
        get_model(name, variant=variant, num_classes=10, weights=path, ema=True, **options)


def test_save_unwraps_compile_and_data_parallel(tmp_path):
    model = get_model("mobilenet_v1", variant="half")
    for wrapped in (nn.DataParallel(model), torch.compile(model)):
        path = tmp_path / "wrapped.pt"
        save(wrapped, path)
        assert _same_weights(load(path), model)


def test_fuseops_checkpoint_for_another_model_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    save(get_model("resnet18", variant="block", padding_mode="replicate"), path)
    with pytest.raises(ValueError, match=r"holds 'resnet18' variant 'block'.*'replicate'.*asked for is 'resnet18' "
                                         r"variant 'block'.*'constant'"):
        get_model("resnet18", variant="block", weights=path)


def test_save_refuses_unknown_models_and_objects(tmp_path):
    with pytest.raises(TypeError, match="not built by fuseops.models.get_model"):
        save(nn.Linear(2, 2), tmp_path / "x.pt")
    model = get_model("mobilenet_v1")
    with pytest.raises(TypeError, match=r"meta\['args'\] is a Namespace"):
        save(model, tmp_path / "x.pt", args=argparse.Namespace())
    with pytest.raises(TypeError, match=r"meta\['log'\]\[1\] is a object"):
        save(model, tmp_path / "x.pt", log=[1, object()])
    # Subclasses of plain types pickle by their class: they would not load back.
    import collections
    import enum

    class Level(enum.IntEnum):
        HIGH = 2

    for value, name in ((Level.HIGH, "Level"), (collections.namedtuple("Pair", "a b")(1, 2), "Pair"),
                        (collections.defaultdict(int), "defaultdict")):
        with pytest.raises(TypeError, match=rf"meta\['v'\] is a {name}"):
            save(model, tmp_path / "x.pt", v=value)
    save(model, tmp_path / "ok.pt", v=collections.OrderedDict(a=1), size=torch.Size([2, 3]))
    assert checkpoint_info(tmp_path / "ok.pt")["meta"]["v"] == {"a": 1}
    assert not (tmp_path / "x.pt").exists()


def test_load_refuses_other_files(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(get_model("mobilenet_v1").state_dict(), path)
    with pytest.raises(ValueError, match="is not a fuseops checkpoint"):
        load(path)
    with pytest.raises(ValueError, match="is not a fuseops checkpoint"):
        checkpoint_info(path)
    # A bare state_dict of the zoo's own names loads by key.
    model = get_model("mobilenet_v1", weights=path)
    assert isinstance(model, nn.Module)


def test_legacy_pickle_with_a_global_is_refused_by_name(tmp_path):
    # A legacy (non-zip) pickle with a disallowed global: refused, naming it, without running it.
    path = tmp_path / "legacy.pt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": {}, "args": argparse.Namespace()}, handle, protocol=2)
    manifest, _ = _original(SMALL)
    with pytest.raises(ValueError, match=r"legacy\.pt' holds objects of \['argparse\.Namespace'\]"):
        _build(manifest, path)


@pytest.mark.parametrize("content, message", [
    (b"hello world", "is not a torch checkpoint"),
    (b"<!DOCTYPE html><html>", "is not a torch checkpoint"),
    (b"PK\x03\x04" + bytes(range(60)), "is not a readable torch checkpoint"),
])
def test_files_that_are_not_checkpoints(tmp_path, content, message):
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    manifest, _ = _original(SMALL)
    with pytest.raises(ValueError, match=message):
        _build(manifest, path)
