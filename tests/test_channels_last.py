"""channels_last through the FuSe op: the cpu backend's NHWC kernels against the reference,
the op's output in the input's memory format, and Inductor handing the op channels_last
inputs in a compiled NCHW network (fuseops/_inductor.py)."""

from __future__ import annotations

import pytest
import torch
from backend_helpers import TORCH_SEEDS, fuse_configs, output_layout, require_backend
from hypothesis import given, settings

import fuseops
from fuseops.fuse_conv.reference import fuse_conv2d_reference, fuse_conv2d_reference_backward

ACTIVATIONS = ("none", "relu", "relu6", "hardswish")
# (rtol, atol) against the float64 reference on the same values: float32 sums over a few taps
# of values up to about 10, and one final rounding to the output dtype.
TOLERANCES = {torch.float64: (1e-12, 1e-12), torch.float32: (2e-5, 2e-5), torch.bfloat16: (1.6e-2, 2e-2)}


@pytest.fixture(autouse=True)
def _cpu_kernels():
    require_backend("fuse_conv2d", "cpu")


def _nhwc(name):
    """The C++ op, which runs its NHWC kernels for channels_last x."""
    return getattr(torch.ops.fuseops_ext, f"fuse_conv2d_{name}")


def _inputs(cfg, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    c = cfg["c_row"] if cfg["full"] else cfg["c_row"] + cfg["c_col"]
    x = torch.randn(cfg["n"], c, cfg["h"], cfg["w"], dtype=torch.float64, generator=g) * 3  # past relu6's 6
    wr = torch.randn(cfg["c_row"], 1, 1, cfg["k"], dtype=torch.float64, generator=g)
    wc = torch.randn(cfg["c_col"], 1, cfg["k"], 1, dtype=torch.float64, generator=g)
    b = torch.randn(cfg["c_row"] + cfg["c_col"], dtype=torch.float64, generator=g) if cfg["bias"] else None
    options = (cfg["full"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["activation"])
    cast = [None if t is None else t.to(dtype) for t in (x, wr, wc, b)]
    cast[0] = cast[0].contiguous(memory_format=torch.channels_last)
    # The reference runs in float64 on the same (rounded) values, so only the kernel's own
    # rounding is measured.
    exact = [None if t is None else t.double().contiguous() for t in cast]
    return cast, exact, options


def _close(got, want, dtype, what):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# Channel counts up to 37: the kernels run channels in blocks of two vectors (16 float, 8
# double), then one vector, then one by one; 37 crosses all three.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@settings(max_examples=40, deadline=None)
@given(cfg=fuse_configs(ACTIVATIONS, max_channels=37), seed=TORCH_SEEDS)
def test_nhwc_kernels_match_the_reference(dtype, cfg, seed):
    (x, wr, wc, b), (x64, wr64, wc64, b64), options = _inputs(cfg, dtype, seed)
    want = fuse_conv2d_reference(x64, wr64, wc64, b64, *options)
    got = _nhwc("forward")(x, wr, wc, b, *options)
    assert got.dtype == dtype and got.shape == want.shape
    # channels_last out, unless x is NCHW-contiguous too (C == 1 or H == W == 1): then the
    # NCHW kernels run and write NCHW.
    assert got.is_contiguous(memory_format=output_layout(x))
    _close(got, want, dtype, "forward")

    grad_out64 = torch.randn(want.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    # Low precision: the pre-activation may round to the other side of a kink (relu's 0,
    # relu6's 0 and 6, hardswish's -3 and 3) and flip the derivative; compare away from them.
    if dtype != torch.float64 and cfg["activation"] != "none":
        pre = fuse_conv2d_reference(x64, wr64, wc64, b64, *options[:4], "none")
        near_kink = torch.zeros_like(pre, dtype=torch.bool)
        for kink in (-3.0, 0.0, 3.0, 6.0):
            near_kink |= (pre - kink).abs() < 0.1 * (1 + abs(kink))
        grad_out64[near_kink] = 0
    grad_out = grad_out64.to(dtype)
    wants = fuse_conv2d_reference_backward(grad_out.double(), x64, wr64, wc64, b64, *options)
    gots = _nhwc("backward")(grad_out, x, wr, wc, b, *options)
    assert gots[0].is_contiguous(memory_format=output_layout(x))
    # Weight and bias gradients sum N * H_out * W_out terms; low precision rounds each.
    terms = max(1, cfg["n"] * want.shape[2] * want.shape[3])
    for name, g, r in zip(("grad_x", "grad_weight_row", "grad_weight_col", "grad_bias"), gots, wants):
        assert g.dtype == dtype and g.shape == r.shape, name
        scale = 1.0 if name == "grad_x" or dtype == torch.float64 else terms ** 0.5 * 3
        rtol, atol = TOLERANCES[dtype]
        torch.testing.assert_close(g.double(), r, rtol=rtol, atol=atol * scale, msg=lambda m, n=name: f"{n}: {m}")


def test_a_strided_channels_last_view_goes_through_nchw():
    # A channels_last view with a cropped W is not dense: the launcher copies it to NCHW for
    # the NCHW kernels, and the output is NCHW.
    base = torch.randn(2, 6, 9, 14, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x = base[..., 2:11]
    assert not x.is_contiguous(memory_format=torch.channels_last)
    wr, wc = torch.randn(3, 1, 1, 3, dtype=torch.float64), torch.randn(3, 1, 3, 1, dtype=torch.float64)
    with fuseops.use_backend("cpu"):
        got = fuseops.fuse_conv2d(x, wr, wc, padding=1, activation="relu")
    assert got.is_contiguous()
    torch.testing.assert_close(got, fuse_conv2d_reference(x.contiguous(), wr, wc, None, False, 1, 1, 1, "relu"))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize(("channels", "k", "stride"), [(21, 3, 1), (40, 5, 2), (9, 7, 1)])
def test_nhwc_forward_keeps_inf_and_nan_where_the_reference_does(channels, k, stride, activation):
    # The forward reads only the taps inside the map (padding is skipped, not multiplied by
    # zero): an inf at a border must give inf or NaN exactly where the reference's does,
    # and a NaN must survive every activation, as in torch.
    x = torch.randn(2, channels, 11, 12, dtype=torch.float64) * 3
    x[0, :, 0, :] = float("inf")
    x[0, :, :, -1] = -float("inf")
    x[1, 1::3, 5, 6] = float("nan")
    c_row = (channels + 1) // 2
    wr = torch.randn(c_row, 1, 1, k, dtype=torch.float64)
    wc = torch.randn(channels - c_row, 1, k, 1, dtype=torch.float64)
    b = torch.randn(channels, dtype=torch.float64)
    options = (False, stride, k // 2, 1, activation)
    want = fuse_conv2d_reference(x, wr, wc, b, *options)
    for dtype in (torch.float64, torch.float32):
        cast = [t.to(dtype) for t in (x, wr, wc, b)]
        got = _nhwc("forward")(cast[0].contiguous(memory_format=torch.channels_last), *cast[1:], *options)
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5, equal_nan=True)


def test_nhwc_backward_does_not_depend_on_the_thread_count():
    x = torch.randn(4, 40, 23, 19).contiguous(memory_format=torch.channels_last)
    wr, wc, b = torch.randn(20, 1, 1, 5), torch.randn(20, 1, 5, 1), torch.randn(40)
    grad_out = torch.randn(4, 40, 23, 19)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(_nhwc("backward")(grad_out, x, wr, wc, b, False, 1, 2, 1, "hardswish"))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert torch.equal(a, b_)


@pytest.mark.parametrize(("change", "match"), [
    (dict(wc=torch.randn(4, 1, 3, 1)), "half variant needs"),
    (dict(wr=torch.randn(3, 1, 2, 3)), "weight_row must have shape"),
    (dict(b=torch.randn(5)), "bias must have shape"),
    (dict(x=torch.randn(1, 6, 2, 2).half()), "x must be float32"),
])
def test_nhwc_kernels_check_their_inputs(change, match):
    args = dict(x=torch.randn(1, 6, 5, 5), wr=torch.randn(3, 1, 1, 3), wc=torch.randn(3, 1, 3, 1),
                b=torch.randn(6))
    args.update(change)
    x = args["x"].contiguous(memory_format=torch.channels_last)
    assert not x.is_contiguous()  # so the NHWC kernels' entry checks it
    with pytest.raises(RuntimeError, match=match):
        _nhwc("forward")(x, args["wr"], args["wc"], args["b"], False, 1, 1, 1, "none")


# ------------------------------------------------------------------------ the op and its layout
def _op_inputs(layout, requires_grad=True):
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = torch.randn(2, 12, 9, 11, dtype=torch.float64)[:, ::2]
    wr = torch.randn(3, 1, 1, 3, dtype=torch.float64)
    wc = torch.randn(3, 1, 3, 1, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    return [t.requires_grad_(requires_grad) for t in (x, wr, wc, b)]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_output_and_grad_x_follow_the_input_layout(backend, layout):
    x, wr, wc, b = _op_inputs(layout)
    with fuseops.use_backend(backend):
        out = fuseops.fuse_conv2d(x, wr, wc, b, activation="relu6")
    assert out.is_contiguous(memory_format=output_layout(x))
    out.backward(torch.randn_like(out))
    assert x.grad.is_contiguous(memory_format=output_layout(x))
    # The registered op (fake tensors, compile) says the same as the eager path.
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    fakes = [mode.from_tensor(t.detach()) for t in (x, wr, wc, b)]
    with mode:
        fake = torch.ops.fuseops.fuse_conv2d(*fakes, False, 1, 1, 1, "relu6")
    assert fake.stride() == out.stride()


def test_opcheck_and_gradcheck_with_channels_last_input():
    x, wr, wc, b = _op_inputs("channels_last")
    with fuseops.use_backend("cpu"):
        torch.library.opcheck(torch.ops.fuseops.fuse_conv2d.default, (x, wr, wc, b, False, 1, 1, 1, "hardswish"))
        assert torch.autograd.gradcheck(lambda *t: fuseops.fuse_conv2d(*t, activation="hardswish"), (x, wr, wc, b))


def _net(channels: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, channels, 3, padding=1),
        fuseops.nn.FuSeConv2d(channels, 3, variant="half", bias=True, activation="relu6"),
        torch.nn.Conv2d(channels, 4, 1),
    ).double().eval()


def test_compiled_network_hands_the_op_channels_last(monkeypatch):
    """Inductor lays the convolutions of a CPU graph out in channels_last; the FuSe op must
    get its input that way too instead of a copy back to NCHW (fuseops/_inductor.py)."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    from fuseops.fuse_conv import cpu_impl

    # A cached compiled graph would skip the lowering this test is about.
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    monkeypatch.setattr(functorch_config, "enable_autograd_cache", False)
    seen = []
    real_forward = cpu_impl.forward

    def spying(x, *args):
        seen.append(output_layout(x))
        return real_forward(x, *args)

    monkeypatch.setattr(cpu_impl, "forward", spying)
    torch._dynamo.reset()
    model = _net()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    # The launcher only runs where Python picks the backend (the C++ kernel at the CPU key
    # would otherwise run directly); it picks the cpu backend either way.
    with torch.no_grad(), fuseops.backends.python_chooses(), fuseops.use_backend("cpu"):
        want = model(x)
        seen.clear()
        got = torch.compile(model, fullgraph=True)(x)
    torch._dynamo.reset()
    torch.testing.assert_close(got, want)
    assert seen == [torch.channels_last]


def test_compiled_channels_last_network_gives_the_nchw_answer():
    torch._dynamo.reset()
    model = _net()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        want = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        got = torch.compile(model_cl, fullgraph=True)(x_cl)
    torch._dynamo.reset()
    torch.testing.assert_close(got, want)
