"""The shipped trained checkpoint (engine/training/shipped.py): greedy decoding with MTP
speculation equals greedy decoding without it, token for token, on a mixed batch of held-out code
prompts, and its trained head's drafts are mostly accepted (a random head's almost never are)."""

from __future__ import annotations

import pytest

from engine.training.evaluate import held_out_prompts
from engine.training.shipped import shipped_checkpoint
from tests.engine.spec_helpers import GREEDY, engine, run

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def model_dir():
    path = shipped_checkpoint()
    if path is None:
        pytest.skip("no shipped trained checkpoint (assets/trained-qwen3_next)")
    return path


def test_greedy_with_trained_head_equals_without(model_dir) -> None:
    prompts = {f"code{i}": ids[: 6 + 5 * i] for i, ids in enumerate(held_out_prompts(model_dir, 6, 32))}
    plain = run(engine(model_dir, prefill_chunk_size=32), prompts, GREEDY)
    spec = engine(model_dir, k=2, prefill_chunk_size=32)
    assert run(spec, prompts, GREEDY) == plain
    m = spec.metrics()
    assert m["spec_acceptance_rate"] > 0.4, m
    assert len(m["spec_acceptance_per_position"]) == 2
    assert m["spec_state_copies"] == 0
