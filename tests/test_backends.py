"""use_backend: the selection is per thread (and per context), never shared."""

from __future__ import annotations

import threading

import torch

import fuseops
from fuseops import backends, use_backend


def test_use_backend_is_isolated_between_threads(monkeypatch):
    """Two threads inside different ``use_backend`` blocks at the same time each see,
    and run on, their own backend; a third thread outside any block sees the default."""
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    inside = threading.Barrier(3)  # all three threads hold their selection at once
    seen: dict[str, tuple[str, str]] = {}
    errors: list[BaseException] = []
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    w_row, w_col = torch.randn(2, 1, 1, 3, dtype=torch.float64), torch.randn(2, 1, 3, 1, dtype=torch.float64)

    def work(name: str | None) -> None:
        try:
            if name is None:
                inside.wait(timeout=30)
                seen["none"] = (backends.current_backend(), backends.resolve("fuse_conv2d", x.device))
                inside.wait(timeout=30)
                return
            with use_backend(name):
                inside.wait(timeout=30)
                fuseops.fuse_conv2d(x, w_row, w_col)
                seen[name] = (backends.current_backend(), backends.resolve("fuse_conv2d", x.device))
                inside.wait(timeout=30)  # neither leaves its block before the others have read theirs
        except BaseException as exc:  # noqa: BLE001 - reported from the main thread
            errors.append(exc)

    names = ["reference", "cpu" if backends.availability("fuse_conv2d", "cpu").ok else "triton", None]
    threads = [threading.Thread(target=work, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert seen[names[0]] == (names[0], names[0])
    assert seen[names[1]] == (names[1], names[1])
    assert seen["none"][0] == "auto"
    assert backends.current_backend() == "auto"  # the main thread was never inside a block


def test_use_backend_nests_and_restores():
    with use_backend("reference"):
        with use_backend("cpu"):
            assert backends.current_backend() == "cpu"
        assert backends.current_backend() == "reference"
