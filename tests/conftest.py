"""Test-wide set-up.

TRITON_INTERPRET must be set before triton is first imported, so the Triton kernels
run on CPU tensors in Triton's interpreter.

Random data: every test gets a fresh torch seed, printed with its failure as
"torch seed: N"; ``FUSEOPS_TEST_SEED=N`` replays it.  Hypothesis tests draw their seed
from hypothesis (``backend_helpers.TORCH_SEEDS``), which prints and replays it itself.

Under ``CI=true`` a skip is a failure, except for tests that need a CUDA device (CI has
none): a backend or tool that CI claims to have must run, not skip.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from backend_helpers import in_ci  # noqa: E402
from hypothesis import settings  # noqa: E402

# Deterministic example counts; no deadline, since the interpreter and first-call
# compilation make timings meaningless.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=False)
settings.register_profile("dev", max_examples=10, deadline=None)
# The one-shot GPU check (bench/gpu_check.sh): each example is a new kernel compile there.
settings.register_profile("gpu", max_examples=4, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: The one skip reason CI accepts: its machine has no GPU.
CI_ALLOWED_SKIP = "needs a CUDA device"

_SEED_KEY = pytest.StashKey[int]()


@pytest.fixture(scope="session")
def scalesim_python():
    """The python of SCALE-Sim 3.0.0's own venv (hwmodel.scalesim), created on first use."""
    from hwmodel.scalesim import ensure_scalesim

    try:
        return ensure_scalesim()
    except (RuntimeError, OSError) as err:
        if in_ci():
            pytest.fail(f"SCALE-Sim could not be installed in CI: {err}")
        pytest.skip(f"SCALE-Sim could not be installed (no access to PyPI?): {err}")


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh random data in every test, reproducible from the seed printed on failure.
    chosen = os.environ.get("FUSEOPS_TEST_SEED")
    seed = int(chosen) if chosen else int.from_bytes(os.urandom(4), "little")
    request.node.stash[_SEED_KEY] = seed
    torch.manual_seed(seed)
    yield seed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = item.stash.get(_SEED_KEY, None)
    if report.failed and seed is not None:
        report.sections.append(("torch seed", f"torch seed: {seed} (replay: FUSEOPS_TEST_SEED={seed})"))
    if not hasattr(report, "wasxfail"):
        _fail_skip_in_ci(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # A whole module skipped at import (pytest.importorskip, allow_module_level) too.
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())


def _fail_skip_in_ci(report) -> None:
    if report.skipped and in_ci():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if CI_ALLOWED_SKIP not in reason:
            report.outcome = "failed"
            report.longrepr = f"skipped under CI=true, which must run it: {reason}"
