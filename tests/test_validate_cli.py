"""The validation sweep and the top-level CLI."""

import subprocess
import sys

import pytest
import torch
from backend_helpers import spy_launchers

from fuseops import validate as validate_mod
from fuseops.cli import main


def test_validate_passes_reference_and_reports_unavailable_with_reason():
    results = list(validate_mod.validate("cpu"))
    by_backend = {}
    for r in results:
        by_backend.setdefault(r.backend, set()).add(r.status)
    assert by_backend["reference"] == {"pass"}
    for r in results:
        if r.status == "unavailable":
            assert r.detail, f"{r.backend} unavailable without a reason"
        assert r.status != "FAIL", r


def test_validate_flags_a_wrong_backend(monkeypatch):
    # A backend that returns a slightly wrong answer must be reported as FAIL.
    from fuseops.fuse_conv import op as fuse_op

    real = fuse_op.FUSE_CONV2D.launcher

    class Wrong:
        @staticmethod
        def forward(*args):
            return real("reference").forward(*args) * (1 + 1e-6)

        @staticmethod
        def backward(*args):
            return real("reference").backward(*args)

    monkeypatch.setattr(fuse_op.FUSE_CONV2D, "launcher", lambda name: Wrong if name == "cpu" else real(name))
    monkeypatch.setattr(validate_mod.backends, "availability",
                        lambda op, b, d=None: validate_mod.backends.Availability(b in ("reference", "cpu")))
    cases = [c for c in validate_mod.default_cases() if c.op == "fuse_conv2d"][:1]
    # The stand-in is a launcher, which only the Python selection calls: under "cpu" the C++
    # kernel at the op's CPU key would otherwise run the real kernels directly.
    with validate_mod.backends.python_chooses():
        statuses = {r.backend: r.status for r in validate_mod.validate("cpu", cases)}
    assert statuses["reference"] == "pass"
    assert statuses["cpu"] == "FAIL"


def test_validate_reports_a_crash_as_fail(monkeypatch):
    from fuseops.block_conv import op as block_op

    real = block_op.BLOCK_CONV2D.launcher

    class Crashing:
        @staticmethod
        def forward(*args):
            raise RuntimeError("kernel exploded")

    monkeypatch.setattr(block_op.BLOCK_CONV2D, "launcher", lambda name: Crashing if name == "cpu" else real(name))
    monkeypatch.setattr(validate_mod.backends, "availability",
                        lambda op, b, d=None: validate_mod.backends.Availability(b in ("reference", "cpu")))
    cases = [c for c in validate_mod.default_cases() if c.op == "block_conv2d"][:1]
    with validate_mod.backends.python_chooses():  # as above: reach the stand-in launcher
        results = {r.backend: r for r in validate_mod.validate("cpu", cases)}
    assert results["cpu"].status == "FAIL"
    assert "kernel exploded" in results["cpu"].detail


def test_cli_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("info", "validate"):
        assert command in out


def test_cli_info_reports_every_backend(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("torch", "fuse_conv2d", "block_conv2d", "reference", "triton", "fuse_conv2d cpu kernels"):
        assert word in out


def test_cli_info_says_whether_the_run_path_was_built(capsys):
    """info prints what the built extension reports about its AVX-512 run path (present only
    when the compiler targeted AVX-512), in either case."""
    from backend_helpers import require_backend

    require_backend("fuse_conv2d", "cpu")
    features = torch.ops.fuseops_ext.fuse_conv2d_cpu_features()
    assert features.startswith(("AVX-512 run path", "no AVX-512 run path")), features
    assert main(["info"]) == 0
    assert features in capsys.readouterr().out


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "fuseops", "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "usage: fuseops" in proc.stdout


def test_unknown_backend_env_var_is_a_clear_error(monkeypatch):
    import fuseops

    monkeypatch.setenv("FUSEOPS_BACKEND", "fastest")
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(ValueError, match="FUSEOPS_BACKEND"):
        fuseops.fuse_conv2d(x, torch.randn(1, 1, 1, 3), torch.randn(1, 1, 3, 1))


def test_backward_runs_on_the_forward_backend(monkeypatch):
    # A forward inside use_backend("reference") whose backward is called outside the block
    # must not switch backends for the backward.
    import fuseops
    from fuseops.fuse_conv import op as fuse_op

    seen = spy_launchers(monkeypatch, fuse_op.FUSE_CONV2D)
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    with fuseops.use_backend("reference"):
        out = fuseops.fuse_conv2d(x, torch.randn(2, 1, 1, 3), torch.randn(1, 1, 3, 1))
    out.sum().backward()
    assert seen == ["reference", "reference"]
