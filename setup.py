"""Build for fuseops.

The C++ extension ``fuseops._C`` is compiled against the torch that is already
installed, so build with ``pip install --no-build-isolation -e .``.  The build
never installs or replaces torch.

* CPU kernels (``csrc/**/*.cpp``, one folder per op) are always compiled when a C++
  compiler exists.
* CUDA kernels (``csrc/cuda/*.cu``) are compiled as well when the installed torch
  has CUDA and ``nvcc`` is found.  ``FUSEOPS_CUDA=0`` skips them, ``=1`` demands them.
* Without a compiler the build does not fail: ``fuseops`` installs as pure Python
  and ``python -m fuseops info`` reports the C++ backend as unavailable, with the
  compiler's error.  ``FUSEOPS_REQUIRE_EXT=1`` turns that into a hard failure.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
# Written by the build so `fuseops info` can say *why* the extension is missing.
BUILD_NOTE = os.path.join(HERE, "fuseops", "_build_note.txt")


def _write_build_note(text: str) -> None:
    with open(BUILD_NOTE, "w") as handle:
        handle.write(text.strip() + "\n")


def _extension_setup() -> dict:
    if os.environ.get("FUSEOPS_NO_EXT") == "1":
        _write_build_note("skipped: FUSEOPS_NO_EXT=1 was set at build time")
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as exc:  # an isolated build cannot see the installed torch
        raise SystemExit(
            "fuseops compiles against the installed torch, which this build cannot import "
            f"({exc}). Install torch first (pip install torch==2.13.0), then build with "
            "`pip install --no-build-isolation -e .`."
        ) from exc

    # One folder per op (csrc/fuse_conv/, csrc/block_conv/, ...); csrc/cuda/ holds only .cu.
    cpp_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    want_cuda = os.environ.get("FUSEOPS_CUDA", "auto")
    has_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    if want_cuda == "1" and not has_cuda:
        raise SystemExit("FUSEOPS_CUDA=1 but torch has no CUDA or nvcc was not found")
    use_cuda = has_cuda and want_cuda != "0" and bool(cuda_sources)

    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    if os.environ.get("FUSEOPS_NATIVE", "1") == "1" and sys.platform.startswith("linux"):
        # The kernels rely on the compiler vectorising their inner loops; tuning for the
        # build machine gives AVX2/AVX-512.  Set FUSEOPS_NATIVE=0 for a portable binary.
        cxx_flags.append("-march=native")
    extra = {"cxx": cxx_flags}
    common = dict(
        name="fuseops._C",
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    if use_cuda:
        extra["nvcc"] = ["-O3", "-std=c++20", "-lineinfo"]  # IEEE maths: the tests' fp32 tolerances assume it
        ext = CUDAExtension(sources=cpp_sources + cuda_sources, extra_compile_args=extra,
                            define_macros=[("FUSEOPS_WITH_CUDA", "1")], **common)
    else:
        ext = CppExtension(sources=cpp_sources, extra_compile_args=extra, **common)

    class OptionalBuildExtension(BuildExtension):
        """Build the extension, but let a compiler failure leave a pure-Python install."""

        def run(self):
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001 - any build failure is reported, not fatal
                if os.environ.get("FUSEOPS_REQUIRE_EXT") == "1":
                    raise
                _write_build_note(f"build failed: {type(exc).__name__}: {exc}")
                print(f"WARNING: fuseops._C was not built ({exc}); the C++ backend is unavailable",
                      file=sys.stderr)
                return
            _write_build_note(
                f"built against torch {torch.__version__}"
                + (f" with CUDA {torch.version.cuda}" if use_cuda else " (CPU kernels only)")
            )

    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuildExtension}}


setup(
    packages=find_packages(include=["fuseops", "fuseops.*", "hwmodel", "hwmodel.*"]) + ["fuseops.kernels"],
    # The Triton kernels live in the top-level `kernels/` folder but ship as
    # `fuseops.kernels`: a top-level `kernels` module would clash with the PyPI package.
    package_dir={"fuseops.kernels": "kernels"},
    package_data={"fuseops": ["_build_note.txt"]},
    **_extension_setup(),
)
