"""What each Python layer around the C++ FuSe op costs when caches are cold: every layer
timed interleaved with a clone (as `fuseops bench fuse` times its providers), full K=3
960x7x7, best of 5 rounds, ms.

    taskset -c 0,1 python bench/fuse_python_layers.py

Layers, innermost first: the raw torch.ops.fuseops_ext op; the launcher
(fuse_conv.cpu_impl.forward); backend resolution + raw op; the eager entry point
(fuse_conv.op.fuse_conv2d_eager); the public fuseops.fuse_conv2d.  docs/perf-notes.md
("Python layers") discusses it; it runs at 2 threads.
"""

import torch

import fuseops
from fuseops import _extension, backends
from fuseops.benchmarking.fuse import Case, _interleaved, make_inputs
from fuseops.fuse_conv import cpu_impl
from fuseops.fuse_conv import op as fuse_op


def main() -> None:
    loaded, reason = _extension.load()
    if not loaded:
        raise SystemExit(reason)
    torch.set_num_threads(2)
    raw = torch.ops.fuseops_ext.fuse_conv2d_forward
    options = (True, 1, 1, 1, "relu6")
    inputs = [make_inputs(Case("full", 3, 960, 7, 7)) for _ in range(6)]  # one set per provider

    def resolved():
        backends.resolve("fuse_conv2d", inputs[2][0].device)
        raw(*inputs[2], *options)

    statements = {
        "clone": lambda: inputs[0][0].clone(),
        "raw op": lambda: raw(*inputs[1], *options),
        "resolve + raw op": resolved,
        "launcher": lambda: cpu_impl.forward(*inputs[3], *options),
        "eager entry": lambda: fuse_op.fuse_conv2d_eager(*inputs[4], *options),
        "public": lambda: fuseops.fuse_conv2d(*inputs[5], variant="full", activation="relu6"),
    }
    for name, (best, median) in _interleaved(statements, 3.0).items():
        print(f"{name:18s} best {best:.3f} ms  median {median:.3f} ms")


if __name__ == "__main__":
    main()
