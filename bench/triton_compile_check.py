"""Compile the Triton fuse_conv kernels ahead of time for NVIDIA GPUs, with no GPU present.

    python bench/triton_compile_check.py              # sm_80 and sm_90, a table of the results
    python bench/triton_compile_check.py --arch 90 --ptx-dir /tmp/ptx

Triton ships its own ptxas, so the full lowering (Triton IR -> TTGIR -> LLVM -> PTX ->
cubin) runs on a CPU-only machine.  This proves the kernels *compile* for the GPU with
the configs the autotuner may pick, and reports registers, spills and whether the
global loads/stores were vectorised.  It says nothing about whether the compiled
kernels are correct or fast on a GPU: that needs a GPU run (bench/gpu_fuse_triton.py).
The interpreter tests (tests/test_fuse_conv_triton.py) check the kernels' semantics.

Must run without TRITON_INTERPRET=1 (under the interpreter ``triton.jit`` returns
interpreter objects that cannot be compiled); the script refuses otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="CUDA compute capabilities")
    parser.add_argument("--ptx-dir", help="write each kernel's PTX here")
    parser.add_argument("--quick", action="store_true", help="one config per kernel (for the test suite)")
    return parser.parse_args(argv)


#: Strides that are 1 for contiguous NCHW tensors and (C, 1, 1, K) / (C, 1, K, 1) weights.
#: Triton's launcher turns an int argument equal to 1 into a constexpr, so they are
#: compiled as constants here too; contiguity along W is what allows vector accesses.
UNIT_STRIDES = ("sxw", "sow", "sgw", "sgxw", "swk", "swr_k", "swc_k", "sb")
#: Arguments the launcher sees as multiples of 16 for a typical layer (H*W % 16 == 0):
#: 16-byte aligned allocations and plane strides.  Row strides (W = 56, 28, 14, 7 in
#: MobileNetV2) are not, so row starts are not known to be aligned.
ALIGNED = ("x_ptr", "w_ptr", "b_ptr", "out_ptr", "g_ptr", "wr_ptr", "wc_ptr", "gx_ptr", "ws_ptr",
           "sxn", "sxc", "son", "soc", "sgn", "sgc", "sgxn", "sgxc")


def source(fn, pointers: dict[str, str], constexprs: dict):
    """An ASTSource specialised the way the JIT launcher would for a contiguous NCHW call."""
    from triton.compiler import ASTSource

    constexprs = dict(constexprs)
    sig, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in UNIT_STRIDES:
            constexprs[name] = 1
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        sig[name] = pointers.get(name, "i32")
        if name in ALIGNED:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)


def widest_access(ptx: str, op: str) -> int:
    """Bytes moved by the widest global load ("ld") or store ("st") instruction in ``ptx``
    (e.g. ld.global.v4.b32 = 16): 16 means full 16-byte vector accesses were generated."""
    widest = 0
    for vec, bits in re.findall(rf"\b{op}\.global(?:\.[a-z_]+\d*)*?(?:\.v(\d))?\.[busf](\d+)\b", ptx):
        widest = max(widest, int(vec or 1) * int(bits) // 8)
    return widest


def resource_usage(cubin: bytes) -> tuple[str, str]:
    """(registers, spill stores) from Triton's bundled cuobjdump, or ('?', '?')."""
    import subprocess
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        try:
            text = subprocess.run([tool, "--dump-resource-usage", handle.name], capture_output=True,
                                  text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            return "?", "?"
    regs = re.search(r"REG:(\d+)", text)
    spills = re.search(r"STACK:(\d+)", text)
    return (regs.group(1) if regs else "?"), (spills.group(1) if spills else "?")


def jobs(quick: bool):
    """(label, kernel, pointer types, constexprs, num_warps) to compile."""
    import triton
    import triton.language as tl
    from fuseops.kernels import fuse_conv as k

    def raw(kernel):  # an autotuned kernel wraps the JITFunction
        return kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel

    dtypes = ["fp16"] if quick else ["fp16", "bf16", "fp32", "fp64"]
    tiles = [(8, 64, 4)] if quick else [(8, 16, 1), (8, 64, 4), (16, 64, 4), (8, 256, 8)]
    out = []
    for dt in dtypes:
        acc = tl.float64 if dt == "fp64" else tl.float32
        acc_ptr = "*fp64" if dt == "fp64" else "*fp32"
        for block_h, block_w, warps in tiles:
            for is_row in (True, False):
                for kernel_size, act, stride in ((3, 2, 1), (5, 3, 2)):
                    common = dict(K=kernel_size, STRIDE=stride, DIL=1, HAS_BIAS=True, ACT=act, ACC=acc,
                                  INDEX64=False, BLOCK_H=block_h, BLOCK_W=block_w)
                    tag = f"{dt} {'row' if is_row else 'col'} K={kernel_size} s={stride} act={act} " \
                          f"{block_h}x{block_w}/{warps}w"
                    # ALIGN=8: a MobileNet row of W=56 (the launcher's hint), PAD = "same"
                    out.append((f"fwd {tag}", raw(k.fuse_fwd_kernel),
                                {p: f"*{dt}" for p in ("x_ptr", "w_ptr", "b_ptr", "out_ptr")},
                                dict(IS_ROW=is_row, PAD=(kernel_size - 1) // 2, ALIGN=8, **common), warps))
                    weight_ptrs = {p: f"*{dt}" for p in ("x_ptr", "g_ptr", "w_ptr", "b_ptr")}
                    out.append((f"bwd_weight {tag}", raw(k.fuse_bwd_weight_kernel),
                                {**weight_ptrs, "ws_ptr": acc_ptr}, dict(IS_ROW=is_row, **common), warps))
                    if is_row and block_h * block_w <= 4 * 32 * warps:  # its autotune space's cap
                        # grad_x handles both parts in one kernel
                        input_ptrs = ("x_ptr", "g_ptr", "wr_ptr", "wc_ptr", "b_ptr", "gx_ptr")
                        out.append((f"bwd_input {tag.replace('row ', '')}", raw(k.fuse_bwd_input_kernel),
                                    {p: f"*{dt}" for p in input_ptrs}, common, warps))
        out.append((f"reduce {acc_ptr[1:]}", raw(k.reduce_partials_kernel),
                    {"ws_ptr": acc_ptr, "out_ptr": acc_ptr}, dict(BLOCK=k.REDUCE_BLOCK, CHUNKS=4), 4))
    if not quick:  # 64-bit offsets
        out.append(("fwd fp16 INDEX64", raw(k.fuse_fwd_kernel),
                    {p: "*fp16" for p in ("x_ptr", "w_ptr", "b_ptr", "out_ptr")},
                    dict(IS_ROW=True, K=3, STRIDE=1, DIL=1, PAD=1, HAS_BIAS=True, ACT=0, ACC=tl.float32,
                         INDEX64=True, ALIGN=8, BLOCK_H=4, BLOCK_W=64), 4))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: interpreter kernels cannot be compiled", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget

    from fuseops.cli.table import print_table

    rows, failures = [], 0
    start = time.perf_counter()
    for arch in args.arch:
        target = GPUTarget("cuda", arch, 32)
        for label, fn, pointers, constexprs, warps in jobs(args.quick):
            try:
                src = source(fn, pointers, constexprs)
                compiled = triton.compile(src, target=target, options={"num_warps": warps})
            except Exception as exc:  # report every failure, then fail
                failures += 1
                rows.append([f"sm_{arch}", label, "FAILED", str(exc).splitlines()[0][:80], "", "", ""])
                continue
            ptx = compiled.asm["ptx"]
            regs, stack = resource_usage(compiled.asm["cubin"])
            rows.append([f"sm_{arch}", label, "ok", regs, stack, widest_access(ptx, "ld"),
                         widest_access(ptx, "st")])
            if args.ptx_dir:
                os.makedirs(args.ptx_dir, exist_ok=True)
                name = re.sub(r"[^\w]+", "_", f"sm{arch}_{label}") + ".ptx"
                with open(os.path.join(args.ptx_dir, name), "w") as handle:
                    handle.write(ptx)
    print_table(f"Triton AOT compile of fuse_conv kernels ({time.perf_counter() - start:.0f} s)",
                ["target", "kernel", "status", "regs", "stack B", "widest ld B", "widest st B"], rows)
    if failures:
        print(f"{failures} kernel(s) failed to compile", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
