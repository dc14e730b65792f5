"""Test-wide set-up.

TRITON_INTERPRET must be set before triton is first imported, so the Triton kernels
run on CPU tensors in Triton's interpreter.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# Deterministic example counts; no deadline, since the interpreter and first-call
# compilation make timings meaningless.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=False)
settings.register_profile("dev", max_examples=10, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _fresh_seed():
    # Fresh random data in every test, but reproducible from the printed seed.
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    yield seed
