"""Project-wide test setup.

Triton kernels run on the CPU through the interpreter; the variable must be set before triton is
imported anywhere, so it is set here, first.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """The tiny hybrid checkpoint (qwen3_next) that service-level tests serve."""
    from tests.helpers.checkpoints import tiny_checkpoint

    return str(tiny_checkpoint("qwen3_next"))


@pytest.fixture(scope="session")
def reference_llm(tiny_model):
    """`engine.LLM` alone on the same checkpoint: the reference served tokens must equal."""
    from engine.llm import LLM

    return LLM(tiny_model)
