"""Baton's logits equal transformers' on the same random checkpoint (fp32, max abs diff <= 1e-4).

transformers is the independent reference here (test-only import). Covered: every supported model
type, the head_dim-256 / partial-rotary / more-value-than-key-heads variant, prompt lengths 1, 17
and 300, a mixed-length batch in one forward, and decode steps after a prefill.
"""

from __future__ import annotations

import pytest
import torch

from engine.cache.tensors import CacheTensors
from engine.loader import load_model
from engine.model_runner import ModelRunner, SeqChunk
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(300)
transformers = pytest.importorskip("transformers")

CASES = [
    ("qwen3_next", "default"),
    ("qwen3_next", "head256"),
    ("qwen3_5_text", "default"),
    ("qwen3_5_moe_text", "default"),
]
TOLERANCE = 1e-4
BLOCK = 16


@pytest.fixture(scope="module", params=CASES, ids=lambda case: "-".join(case))
def models(request):
    model_type, variant = request.param
    path = tiny_checkpoint(model_type, variant)
    transformers.logging.set_verbosity_error()
    reference = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    cfg, model = load_model(path)
    return cfg, model, reference


def prompt(length: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def reference_logits(reference, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return reference(torch.tensor([ids])).logits[0].float()


def fresh_runner(cfg, model, num_slots: int = 4) -> ModelRunner:
    return ModelRunner(
        model, CacheTensors.allocate(cfg, num_pages=128, num_slots=num_slots, block_size=BLOCK)
    )


def pages_for(seq_index: int, count: int = 24) -> list[int]:
    """Disjoint, deliberately non-contiguous pages per sequence."""
    return [seq_index + 4 * i for i in range(count)][::-1]


@pytest.mark.parametrize("length", [1, 17, 300])
def test_prompt_logits_match_transformers(models, length: int) -> None:
    cfg, model, reference = models
    ids = prompt(length, cfg.vocab_size, seed=length)
    logits = fresh_runner(cfg, model).forward([SeqChunk(ids, 0, pages_for(0), 0)], all_logits=True)
    expected = reference_logits(reference, ids)
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() <= TOLERANCE


def test_mixed_length_batch_matches_transformers(models) -> None:
    cfg, model, reference = models
    lengths = [5, 300, 1, 17]
    prompts = [prompt(n, cfg.vocab_size, seed=100 + i) for i, n in enumerate(lengths)]
    chunks = [SeqChunk(ids, 0, pages_for(i), i) for i, ids in enumerate(prompts)]
    logits = fresh_runner(cfg, model).forward(chunks, all_logits=True)
    offsets = torch.tensor([0, *lengths]).cumsum(0).tolist()
    for i, ids in enumerate(prompts):
        expected = reference_logits(reference, ids)
        got = logits[offsets[i] : offsets[i + 1]]
        assert (got - expected).abs().max().item() <= TOLERANCE, f"sequence {i} (length {lengths[i]})"


def test_decode_steps_match_transformers(models) -> None:
    """Prefill two prompts, then decode three tokens for both in shared batches."""
    cfg, model, reference = models
    runner = fresh_runner(cfg, model)
    prompts = [prompt(20, cfg.vocab_size, seed=7), prompt(33, cfg.vocab_size, seed=8)]
    continuations = [prompt(3, cfg.vocab_size, seed=9), prompt(3, cfg.vocab_size, seed=10)]
    runner.forward([SeqChunk(p, 0, pages_for(i), i) for i, p in enumerate(prompts)])
    for step in range(3):
        chunks = [
            SeqChunk([continuations[i][step]], len(prompts[i]) + step, pages_for(i), i) for i in range(2)
        ]
        logits = runner.forward(chunks)
        for i in range(2):
            expected = reference_logits(reference, prompts[i] + continuations[i][: step + 1])[-1]
            assert (logits[i] - expected).abs().max().item() <= TOLERANCE, f"step {step}, sequence {i}"
