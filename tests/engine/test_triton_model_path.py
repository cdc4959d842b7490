"""The model's GPU wiring, run on CPU: with `FORCE_TRITON` every fast op the model dispatches on
CUDA (split-K paged decode, paged extend, fused MoE, causal conv1d, GDN decode step) runs as its
Triton kernel under TRITON_INTERPRET=1, and a mixed step (a chunk over a cached prefix, a fresh
prefill, decodes) gives the logits and caches of the torch path."""

from __future__ import annotations

import pytest
import torch

import engine.models.forward_batch as forward_batch
import engine.ops.dispatch as dispatch
from engine.cache.tensors import CacheTensors
from engine.loader import load_model
from engine.model_runner import ModelRunner, SeqChunk
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = [pytest.mark.triton, pytest.mark.timeout(300)]
BLOCK = 16


def run_steps(cfg, model) -> tuple[list[torch.Tensor], CacheTensors]:
    runner = ModelRunner(model, CacheTensors.allocate(cfg, num_pages=32, num_slots=4, block_size=BLOCK))
    gen = torch.Generator().manual_seed(0)
    a, b, c = (torch.randint(0, cfg.vocab_size, (n,), generator=gen).tolist() for n in (37, 20, 9))
    tables = [[3, 7, 1, 9], [2, 5], [11]]
    first = runner.forward([SeqChunk(a[:21], 0, tables[0], 2), SeqChunk(b[:19], 0, tables[1], 0)])
    # Mixed: seq 0 continues over its cached 21-token prefix, seq 1 decodes, seq 2 starts fresh.
    second = runner.forward(
        [
            SeqChunk(a[21:], 21, tables[0], 2),
            SeqChunk(b[19:], 19, tables[1], 0),
            SeqChunk(c, 0, tables[2], 3),
        ],
        all_logits=True,
    )
    third = runner.forward([SeqChunk([a[0]], 37, tables[0], 2), SeqChunk([c[0]], 9, tables[2], 3)])
    return [first, second, third], runner.cache


@pytest.mark.slow  # ~70 s: every kernel of every layer through the interpreter
def test_forced_triton_path_equals_torch_path(monkeypatch) -> None:
    """qwen3_next: its tiny checkpoint has a dense MLP layer besides the MoE ones."""
    cfg, model = load_model(tiny_checkpoint("qwen3_next"))
    expected, expected_cache = run_steps(cfg, model)

    monkeypatch.setattr(dispatch, "FORCE_TRITON", True)
    assert forward_batch.use_triton("cpu")
    got, cache = run_steps(cfg, model)

    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=2e-4, rtol=1e-4)
    for name, tensor in expected_cache.regions().items():
        torch.testing.assert_close(cache.regions()[name], tensor, atol=2e-4, rtol=1e-4, msg=name)
