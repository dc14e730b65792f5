"""ONNX: every zoo network exports to standard operators, passes the checker, reproduces its
outputs in onnxruntime with a dynamic batch, and is costed from the file by both hardware
models exactly as from the module.  Needs the onnx extra (skips outside CI without it)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from onnx import TensorProto, helper  # noqa: E402

import fuseops.onnx as fonnx  # noqa: E402
from fuseops.models import get_model, list_models  # noqa: E402
from fuseops.nn import BlockConv2d, FuSeConv2d, FuSeConvBNAct  # noqa: E402
from hwmodel import SystolicArray  # noqa: E402
from hwmodel.fpga import estimate  # noqa: E402
from hwmodel.onnx_reader import read_onnx  # noqa: E402
from hwmodel.trace import trace  # noqa: E402

ZOO = [(name, variant) for name, variants in list_models().items() for variant in variants]


def _randomise_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.normal_(1, 0.1)
                module.bias.normal_(0, 0.1)
    return model.eval()


def _run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _rel(out: np.ndarray, ref: torch.Tensor) -> float:
    ref = ref.detach().numpy()
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def _layer_key(layer) -> dict:
    record = dataclasses.asdict(layer)
    record.pop("name")
    record.pop("meta")
    return record


def _only_default_domain(path) -> None:
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert not any("fuseops" in node.op_type for node in model.graph.node)


@pytest.mark.parametrize("name, variant", ZOO)
def test_zoo_network_exports_and_reproduces(tmp_path, name, variant):
    model = _randomise_batchnorm(get_model(name, variant=variant))
    path = tmp_path / "net.onnx"
    fonnx.export(model, torch.randn(2, 3, 64, 64), path)
    _only_default_domain(path)
    x = torch.randn(3, 3, 64, 64)  # another batch size than the export's: the batch is dynamic
    with torch.no_grad():
        assert _rel(_run(path, x), model(x)) < 1e-4
    # hwmodel reads the same layers from the file as from the module.
    from_file = [_layer_key(layer) for layer in read_onnx(path, batch=3)]
    assert from_file == [_layer_key(layer) for layer in trace(model, (3, 3, 64, 64))]


BLOCK_CASES = [
    # (padding_mode, blocking, block_size, stride, stride_mode, H, W): even and ragged grids
    ("constant", "fixed", 4, 1, "conv", 16, 16),
    ("replicate", "fixed", 5, 1, "conv", 13, 12),
    ("reflect", "fixed", 6, 2, "conv", 18, 15),
    ("reflect", "hierarchical", 3, 1, "conv", 12, 11),
    ("constant", "hierarchical", 2, 2, "pool", 16, 14),
    ("replicate", "fixed", 32, 1, "conv", 9, 10),  # one block: a Pad and a Conv
]


@pytest.mark.parametrize("mode, blocking, size, stride, stride_mode, height, width", BLOCK_CASES)
def test_block_conv_translation(tmp_path, mode, blocking, size, stride, stride_mode, height, width):
    layer = BlockConv2d(3, 5, 3, stride=stride, padding=1, block_size=size, padding_mode=mode, blocking=blocking,
                        stride_mode=stride_mode, bias=True).eval()
    path = tmp_path / "block.onnx"
    fonnx.export(layer, torch.randn(2, 3, height, width), path)
    _only_default_domain(path)
    x = torch.randn(4, 3, height, width)
    with torch.no_grad():
        assert _rel(_run(path, x), layer(x)) < 1e-5
    from_file = [_layer_key(item) for item in read_onnx(path, batch=4)]
    assert from_file == [_layer_key(item) for item in trace(layer, x.shape)]


@pytest.mark.parametrize("variant, channels, kernel, stride, dilation, bias, activation", [
    ("half", 7, 3, 1, 1, True, "relu6"),
    ("half", 8, 5, 2, 1, False, "hardswish"),
    ("full", 5, 3, 2, 2, True, "relu"),
    ("full", 6, 3, 1, 1, False, None),
])
def test_fuse_conv_translation(tmp_path, variant, channels, kernel, stride, dilation, bias, activation):
    layer = FuSeConv2d(channels, kernel, stride, variant=variant, dilation=dilation, bias=bias,
                       activation=activation).eval()
    if bias:
        torch.nn.init.normal_(layer.bias)
    path = tmp_path / "fuse.onnx"
    fonnx.export(layer, torch.randn(2, channels, 15, 13), path)
    _only_default_domain(path)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("Conv") == 2
    x = torch.randn(3, channels, 15, 13)
    with torch.no_grad():
        assert _rel(_run(path, x), layer(x)) < 1e-5


def test_translation_table_with_torch_onnx_export(tmp_path):
    layer = FuSeConvBNAct(6, 3, 1, variant="half").eval()
    path = tmp_path / "direct.onnx"
    program = torch.onnx.export(layer, (torch.randn(2, 6, 8, 8),), dynamo=True, verbose=False,
                                custom_translation_table=fonnx.translation_table())
    program.save(str(path))
    _only_default_domain(path)
    x = torch.randn(2, 6, 8, 8)
    with torch.no_grad():
        assert _rel(_run(path, x), layer(x)) < 1e-5


def test_fixed_batch_export(tmp_path):
    model = get_model("mobilenet_v3_small", variant="half").eval()
    path = tmp_path / "fixed.onnx"
    fonnx.export(model, torch.randn(2, 3, 32, 32), path, dynamic_batch=False)
    first = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert first.dim_value == 2


# --- hwmodel on a hand-built graph -----------------------------------------------------


def _hand_built(path) -> None:
    """x (1,3,32,32) -> Conv 3x3/s2 p1 -> 8 -> Relu -> Pad(reflect, 1) -> Conv 1x3 dw (pads 0)
    -> Conv 3x3 dw p1 -> GlobalAveragePool -> Flatten -> Gemm 8 -> 10 (transB) -> ConvTranspose."""
    def weight(name, *shape):
        return helper.make_tensor(name, TensorProto.FLOAT, shape, np.random.default_rng(0).normal(
            size=int(np.prod(shape))).astype(np.float32).tolist())

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="stem", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Pad", ["b", "pads"], ["c"], mode="reflect"),
        helper.make_node("Conv", ["c", "w2"], ["d"], name="row", kernel_shape=[1, 3], group=8),
        helper.make_node("Conv", ["d", "w3"], ["e"], name="dw", kernel_shape=[3, 3], group=8, pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["e"], ["f"]),
        helper.make_node("Flatten", ["f"], ["g"]),
        helper.make_node("Gemm", ["g", "w4"], ["y"], name="fc", transB=1),
        helper.make_node("ConvTranspose", ["e", "w5"], ["z"], name="up", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    pads = helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 1, 1, 0, 0, 1, 1])
    graph = helper.make_graph(
        nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 36, 36])],
        [weight("w1", 8, 3, 3, 3), weight("w2", 8, 1, 1, 3), weight("w3", 8, 1, 3, 3), weight("w4", 10, 8),
         weight("w5", 8, 4, 2, 2), pads])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_hand_built_graph_is_read_and_costed(tmp_path):
    path = tmp_path / "hand.onnx"
    _hand_built(path)
    read = read_onnx(path)
    by_name = {layer.name: layer for layer in read}
    assert list(by_name) == ["stem", "row", "dw", "fc"]
    stem, row, dw, fc = by_name.values()
    assert (stem.kind, stem.in_channels, stem.in_h, stem.out_channels, stem.stride_h, stem.pad_h) == \
        ("conv", 3, 32, 8, 2, 1)
    assert (stem.out_h, stem.macs) == (16, 8 * 16 * 16 * 27)
    # The Pad node is folded into the 1x3 depthwise conv's padding: 16x16 stays 16x16.
    assert (row.kind, row.in_h, row.in_w, row.pad_h, row.pad_w, row.out_h, row.out_w) == \
        ("fuse_row", 16, 16, 1, 1, 18, 16)
    assert (dw.kind, dw.groups, dw.out_h) == ("depthwise", 8, 18)
    assert (fc.kind, fc.in_channels, fc.out_channels, fc.macs) == ("linear", 8, 10, 80)
    assert [(u.name, u.type_name) for u in read.unsupported] == [("up", "ConvTranspose")]
    total = sum(layer.macs for layer in read)
    systolic = SystolicArray(8, 8).estimate(path)
    assert sum(cost.macs for cost in systolic.layers) == total
    assert [u.name for u in systolic.unsupported] == ["up"]
    fpga = estimate(path, schedule="layer")
    assert fpga.latency_s > 0


def test_model_proto_and_batch(tmp_path):
    path = tmp_path / "hand.onnx"
    _hand_built(path)
    assert [layer.batch for layer in read_onnx(onnx.load(str(path)))] == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="batch must be an int >= 1"):
        read_onnx(path, batch=0)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        read_onnx(tmp_path / "missing.onnx")


def test_hwmodel_cli_reads_onnx(tmp_path):
    model = get_model("resnet18", variant="block").eval()
    path = tmp_path / "r18.onnx"
    fonnx.export(model, torch.randn(2, 3, 224, 224), path)

    def cli(*args):
        result = subprocess.run([sys.executable, "-m", "fuseops.cli.hwmodel", *args], capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr
        return result.stdout

    from_file = cli("fpga", str(path), "--no-plot")
    from_zoo = cli("fpga", "resnet18", "--no-plot")
    # The schedules table: the same figures from the file as from the zoo network.
    def rows(text):
        return [line for line in text.split("schedules", 1)[1].splitlines() if line.startswith("│")]
    assert len(rows(from_zoo)) == 3
    assert rows(from_file) == rows(from_zoo)
    systolic = cli("systolic", str(path), "--array", "32x32")
    assert "r18.onnx on a 32x32 plain array" in systolic
    result = subprocess.run([sys.executable, "-m", "fuseops.cli.hwmodel", "systolic", str(tmp_path / "no.onnx")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "ONNX file not found" in result.stderr


def test_a_crop_before_a_conv_is_an_ordinary_conv(tmp_path):
    # Slice(H) -> Slice(W) -> Conv without fuseops' block-grid mark: a conv on the 16x16 crop.
    class Crop(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x[:, :, 4:20, 8:24])

    path = tmp_path / "crop.onnx"
    fonnx.export(Crop().eval(), torch.randn(2, 3, 32, 32), path)
    (layer,) = read_onnx(path)
    assert (layer.in_h, layer.in_w, layer.block_rows, layer.block_cols) == (16, 16, None, None)
    assert layer.macs == 1 * 4 * 16 * 16 * 27


def test_only_the_batch_may_be_symbolic(tmp_path):
    conv = torch.nn.Conv2d(3, 4, 3, padding=1).eval()
    path = tmp_path / "dyn.onnx"
    size = torch.export.Dim("size", min=8, max=64)
    torch.onnx.export(conv, (torch.randn(2, 3, 16, 16),), path, dynamo=True, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch"), 2: size, 3: size},))
    with pytest.raises(ValueError, match=r"symbolic dimensions \[2, 3\].*only the batch dimension may be dynamic"):
        read_onnx(path)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"model": "net"}, TypeError, "model must be a torch.nn.Module, got str"),
        ({"args": "x"}, TypeError, "args must be a tensor or a tuple of the model's inputs, got str"),
        ({"args": 3}, TypeError, "args must be a tensor or a tuple of the model's inputs, got int"),
        ({"args": ()}, ValueError, "args must hold at least one example input, got an empty sequence"),
        ({"path": 7}, TypeError, "path must be a str or os.PathLike, got int"),
        ({"opset": "18"}, TypeError, r"opset must be an int \(e.g. 18\) or None, got str"),
        ({"opset": True}, TypeError, "opset must be an int"),
        ({"opset": 0}, ValueError, "opset must be >= 1, got 0"),
        ({"dynamic_batch": 1}, TypeError, "dynamic_batch must be a bool, got int"),
    ],
)
def test_export_names_the_bad_argument_before_tracing(tmp_path, change, error, message):
    kwargs = {"model": torch.nn.Conv2d(3, 4, 3).eval(), "args": torch.randn(2, 3, 8, 8),
              "path": tmp_path / "m.onnx", **change}
    with pytest.raises(error, match=f"^{message}"):
        fonnx.export(kwargs.pop("model"), kwargs.pop("args"), kwargs.pop("path"), **kwargs)
    assert not (tmp_path / "m.onnx").exists()


def test_export_refuses_a_path_in_a_missing_folder(tmp_path):
    missing = tmp_path / "no" / "such" / "m.onnx"
    with pytest.raises(ValueError, match="^path's folder .*no/such' does not exist$"):
        fonnx.export(torch.nn.Conv2d(3, 4, 3).eval(), torch.randn(2, 3, 8, 8), missing)
