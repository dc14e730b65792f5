"""Validate and time the Triton (and, if built, CUDA) fuse_conv2d kernels on a GPU.

    python bench/gpu_fuse_triton.py                      # validate, then time (needs a CUDA GPU)
    python bench/gpu_fuse_triton.py --validate-only
    python bench/gpu_fuse_triton.py --batch 64 --dtype fp16 --markdown out.md
    python bench/gpu_fuse_triton.py --smoke              # no GPU: tiny shapes in Triton's
                                                         # interpreter, to check this script

Validation: every backend's forward and backward against the float64 reference, with
the Triton launcher's buffers filled with NaN first (an unwritten element shows up),
per-dtype tolerances, odd shapes, channels_last, and bitwise-repeatable weight grads.

Timing (CUDA events via ``triton.testing.do_bench``, median): forward and
forward+backward of each backend against the eager reference, ``torch.compile`` of
the reference, and the floor: a device copy of the same bytes (``x.clone()``, read
|x| + write |x|), whose rate is taken as the measured bandwidth.  "% of copy BW" is
(|x| + |out|) / t_forward over that bandwidth.

Shapes: MobileNetV2's depthwise layers (C, H, W) = (144,56,56), (192,28,28),
(384,14,14), (576,14,14), (960,7,7), both variants, K = 3 and 5, stride 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

SHAPES = [(144, 56, 56), (192, 28, 28), (384, 14, 14), (576, 14, 14), (960, 7, 7)]
# Validation shapes: odd C/H/W, H or W smaller than a tile, several tiles, and
# MobileNet-like rows (W = 56, 28) where the forward gets an ALIGN = 8 / 4 vector hint.
VALIDATION_SHAPES = [(2, 5, 11, 19), (3, 7, 33, 65), (1, 3, 1, 130), (2, 17, 57, 9),
                     (2, 16, 14, 56), (1, 8, 28, 28)]
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
# (rtol, atol) for out/grad_x and for the weight/bias grads (fp32 accumulation, one rounding).
TOLERANCES = {
    "float32": ((1e-5, 1e-5), (1e-5, 1e-4)),
    "float16": ((2e-3, 2e-3), (2e-3, 1e-2)),
    "bfloat16": ((1.6e-2, 1e-2), (1.6e-2, 5e-2)),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 1], help="batch sizes to time")
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["fp16", "fp32"])
    parser.add_argument("--variant", nargs="+", choices=["half", "full"], default=["half", "full"])
    parser.add_argument("--kernel", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--validate-only", action="store_true", help="check correctness, skip timing")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    parser.add_argument("--markdown", help="also write the timing table as markdown to this file")
    parser.add_argument("--smoke", action="store_true",
                        help="no GPU: tiny shapes on the CPU, Triton interpreter (checks the script only)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: this script needs a GPU (use --smoke to check it on the CPU)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    backends_here = available_backends(device)
    print(f"device: {describe_device(device)}; backends: {', '.join(backends_here)}")
    failures = validate(device, backends_here, args)
    if failures:
        print(f"VALIDATION FAILED ({len(failures)}):", *failures, sep="\n  ")
        return 1
    print("validation passed")
    if not args.validate_only:
        run_timings(device, backends_here, args)
    return 0


def describe_device(device) -> str:
    import torch
    import triton

    versions = f"torch {torch.__version__}, triton {triton.__version__}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, {versions}"
    return f"CPU (Triton interpreter), {versions}"


def available_backends(device) -> list[str]:
    from fuseops import backends

    return [name for name in ("triton", "cuda") if backends.availability("fuse_conv2d", name, device).ok]


# ----------------------------------------------------------------------------- validation
def make_case(shape, variant, kernel, dtype, device, bias=True):
    import torch

    n, c, h, w = shape
    c_row = c if variant == "full" else (c + 1) // 2
    c_col = c if variant == "full" else c - c_row
    x = torch.randn(shape, dtype=dtype, device=device)
    weight_row = torch.randn(c_row, 1, 1, kernel, dtype=dtype, device=device)
    weight_col = torch.randn(c_col, 1, kernel, 1, dtype=dtype, device=device)
    b = torch.randn(c_row + c_col, dtype=dtype, device=device) if bias else None
    return x, weight_row, weight_col, b


def fwd_bwd(backend, inputs, grad_out, **options):
    import torch

    import fuseops

    leaves = [t.detach().requires_grad_(True) if t is not None else None for t in inputs]
    with fuseops.use_backend(backend):
        out = fuseops.fuse_conv2d(*leaves, **options)
        grads = torch.autograd.grad(out, [t for t in leaves if t is not None], grad_out)
    return out.detach(), grads


def reference_fwd_bwd(inputs, grad_out, *, variant, stride, dilation, activation):
    import torch

    from fuseops.fuse_conv import fuse_conv2d_reference, resolve_padding

    leaves = [t.detach().double().requires_grad_(True) if t is not None else None for t in inputs]
    pad = resolve_padding(None, inputs[1].shape[-1], dilation)
    out = fuse_conv2d_reference(*leaves, variant == "full", stride, pad, dilation, activation or "none")
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], grad_out.double())
    return out.detach(), grads


def validate(device, backend_names, args) -> list[str]:
    import torch

    from fuseops.fuse_conv import fuse_conv2d_reference, resolve_padding, triton_impl

    original_empty = triton_impl._empty

    def poisoned(shape, dtype, dev):
        return torch.full(shape, float("nan"), dtype=dtype, device=dev)

    triton_impl._empty = poisoned
    failures = []
    shapes = [(1, 3, 9, 17), (2, 4, 5, 20)] if args.smoke else VALIDATION_SHAPES
    dtypes = ["float32"] if args.smoke else [DTYPES[d] for d in args.dtype] + ["float32"]
    combos = [("half", 3, 1, 1, "relu6"), ("full", 5, 2, 1, "hardswish"), ("half", 7, 1, 2, None),
              ("full", 3, 3, 1, "relu"), ("half", 1, 2, 1, "hardswish")]
    try:
        for backend in backend_names:
            for dtype_name in sorted(set(dtypes)):
                dtype = getattr(torch, dtype_name)
                (rtol, atol), (rtol_w, atol_w) = TOLERANCES[dtype_name]
                for i, shape in enumerate(shapes):
                    for variant, kernel, stride, dilation, act in combos:
                        inputs = make_case(shape, variant, kernel, dtype, device, bias=i % 2 == 0)
                        if i == 1:  # one layout per shape set: channels_last input
                            inputs = (inputs[0].to(memory_format=torch.channels_last), *inputs[1:])
                        options = dict(variant=variant, stride=stride, dilation=dilation, activation=act)
                        pad = resolve_padding(None, kernel, dilation)
                        with torch.no_grad():  # only for the output shape
                            out_shape = fuse_conv2d_reference(
                                *[t.double() if t is not None else None for t in inputs],
                                variant == "full", stride, pad, dilation, "none").shape
                        grad_out = torch.randn(out_shape, dtype=dtype, device=device)
                        out, grads = fwd_bwd(backend, inputs, grad_out, **options)
                        ref_out, ref_grads = reference_fwd_bwd(inputs, grad_out, **options)
                        label = (f"{backend} {dtype_name} {shape} {variant} K={kernel} s={stride} "
                                 f"d={dilation} {act}")
                        checks = [("out", out, ref_out, rtol, atol)]
                        names = ["grad_x", "grad_weight_row", "grad_weight_col", "grad_bias"]
                        for name, got, want in zip(names, grads, ref_grads):
                            tol = (rtol, atol) if name == "grad_x" else (rtol_w, atol_w)
                            checks.append((name, got, want, *tol))
                        for name, got, want, rt, at in checks:
                            try:
                                torch.testing.assert_close(got.double(), want, rtol=rt, atol=at)
                            except AssertionError as exc:
                                failures.append(f"{label}: {name}: {str(exc).splitlines()[0:3]}")
                        again = fwd_bwd(backend, inputs, grad_out, **options)[1]
                        if not all(torch.equal(a, b) for a, b in zip(grads[1:], again[1:])):
                            failures.append(f"{label}: weight/bias gradients differ between two runs")
    finally:
        triton_impl._empty = original_empty
    return failures


# ----------------------------------------------------------------------------- timing
def timer(device):
    if device.type == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")

    def cpu_time(fn):  # --smoke only: one call, to exercise the table code
        fn()
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    return cpu_time


COLUMNS = ["N", "dtype", "C,H,W", "variant", "K", "mode", "provider", "ms", "vs eager", "% of copy BW"]
ACTIVATION = "relu6"  # MobileNetV2's; the kernels fuse it, the reference applies it separately


def providers_for(x, wr, wc, b, variant, grad_out, backend_names, compiled_ref):
    """name -> (forward fn, forward+backward fn) for one case."""
    import torch

    import fuseops
    from fuseops.fuse_conv import fuse_conv2d_reference, resolve_padding

    full = variant == "full"
    pad = resolve_padding(None, wr.shape[-1], 1)
    params = [x, wr, wc, b]

    def plain(fn):
        def fwd():
            with torch.no_grad():
                return fn(x, wr, wc, b, full, 1, pad, 1, ACTIVATION)

        def fwd_bwd():
            return torch.autograd.grad(fn(x, wr, wc, b, full, 1, pad, 1, ACTIVATION), params, grad_out)

        return fwd, fwd_bwd

    def backend(name):
        def fwd():
            with torch.no_grad(), fuseops.use_backend(name):
                return fuseops.fuse_conv2d(x, wr, wc, b, variant=variant, activation=ACTIVATION)

        def fwd_bwd():
            with fuseops.use_backend(name):
                out = fuseops.fuse_conv2d(x, wr, wc, b, variant=variant, activation=ACTIVATION)
                return torch.autograd.grad(out, params, grad_out)

        return fwd, fwd_bwd

    providers = {"eager": plain(fuse_conv2d_reference)}
    if compiled_ref is not None:
        providers["compile(ref)"] = plain(compiled_ref)
    for name in backend_names:
        providers[name] = backend(name)
    return providers


def time_case(bench, device, n, dtype, chw, variant, kernel, backend_names, compiled_ref):
    """Table rows for one (N, dtype, shape, variant, K)."""
    import torch

    c, h, w = chw
    x, wr, wc, b = (t.requires_grad_(True) for t in make_case((n, c, h, w), variant, kernel, dtype, device))
    c_out = 2 * c if variant == "full" else c
    grad_out = torch.randn(n, c_out, h, w, dtype=dtype, device=device)
    copy_ms = bench(lambda: x.clone())
    bandwidth = 2 * x.numel() * x.element_size() / copy_ms  # bytes per ms
    op_bytes = (x.numel() + grad_out.numel()) * x.element_size()  # read x, write out
    providers = providers_for(x, wr, wc, b, variant, grad_out, backend_names, compiled_ref)
    times = {name: (bench(fwd), bench(fwd_bwd)) for name, (fwd, fwd_bwd) in providers.items()}
    base = [n, str(dtype).replace("torch.", ""), f"{c},{h},{w}", variant, kernel]
    rows = [[*base, "copy", "x.clone()", f"{copy_ms:.4f}", "", "100"]]
    for mode_index, mode in enumerate(("fwd", "fwd+bwd")):
        eager_ms = times["eager"][mode_index]
        for name, pair in times.items():
            ms = pair[mode_index]
            pct = f"{100 * op_bytes / ms / bandwidth:.0f}" if mode == "fwd" else ""
            rows.append([*base, mode, name, f"{ms:.4f}", f"{eager_ms / ms:.2f}x", pct])
    return rows


def run_timings(device, backend_names, args) -> None:
    import torch

    from fuseops.cli.table import markdown_table, print_table
    from fuseops.fuse_conv import fuse_conv2d_reference

    bench = timer(device)
    batches = [1] if args.smoke else args.batch
    shapes = [(8, 6, 10)] if args.smoke else SHAPES
    dtypes = [torch.float32] if args.smoke else [getattr(torch, DTYPES[d]) for d in args.dtype]
    compiled_ref = None if args.no_compile or args.smoke else torch.compile(fuse_conv2d_reference)
    cases = [(n, dtype, chw, variant, kernel) for n in batches for dtype in dtypes for chw in shapes
             for variant in args.variant for kernel in args.kernel]
    rows = []
    for i, case in enumerate(cases):
        rows += time_case(bench, device, *case, backend_names, compiled_ref)
        n, dtype, chw, variant, kernel = case
        print(f"[{i + 1}/{len(cases)}] timed N={n} {dtype} {chw} {variant} K={kernel}", flush=True)
    title = f"fuse_conv2d on {describe_device(device)} (activation {ACTIVATION}, bias, stride 1)"
    print_table(title, COLUMNS, rows)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(f"{title}\n\nCommand: python bench/gpu_fuse_triton.py {' '.join(sys.argv[1:])}\n\n")
            handle.write(markdown_table(COLUMNS, rows))
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    sys.exit(main())
