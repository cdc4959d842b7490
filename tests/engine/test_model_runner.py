"""ModelRunner invariants: chunked prefill == one shot, a batch == each request alone, prefix
continuation from a copied state slot, layer callbacks, cache layout, and clear errors."""

from __future__ import annotations

import pytest
import torch

from engine.cache.tensors import CacheTensors
from engine.loader import load_model
from engine.model_runner import ModelRunner, SeqChunk
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(120)
BLOCK = 16
# Chunked vs one-shot differ only by fp32 summation order.
TOLERANCE = 2e-5


@pytest.fixture(scope="module", params=["qwen3_next", "qwen3_5_text"])
def loaded(request):
    return load_model(tiny_checkpoint(request.param))


def new_runner(cfg, model, num_pages: int = 96, num_slots: int = 8) -> ModelRunner:
    return ModelRunner(
        model, CacheTensors.allocate(cfg, num_pages=num_pages, num_slots=num_slots, block_size=BLOCK)
    )


def tokens(n: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_chunked_prefill_equals_one_shot(loaded) -> None:
    cfg, model = loaded
    ids = tokens(150, cfg.vocab_size, seed=1)
    pages = list(range(10, 20))
    one_shot = new_runner(cfg, model)
    full = one_shot.forward([SeqChunk(ids, 0, pages, 3)], all_logits=True)
    chunked = new_runner(cfg, model)
    parts = [
        chunked.forward([SeqChunk(ids[s : s + 32], s, pages, 3)], all_logits=True) for s in range(0, 150, 32)
    ]
    torch.testing.assert_close(torch.cat(parts), full, atol=TOLERANCE, rtol=0)
    # The caches hold the same KV and state afterwards.
    torch.testing.assert_close(chunked.cache.ssm[:, 3], one_shot.cache.ssm[:, 3], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(chunked.cache.conv, one_shot.cache.conv, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(
        chunked.cache.kv[:, pages], one_shot.cache.kv[:, pages], atol=TOLERANCE, rtol=0
    )


def test_batch_equals_each_request_alone(loaded) -> None:
    cfg, model = loaded
    runner = new_runner(cfg, model)
    prompts = [tokens(n, cfg.vocab_size, seed=n) for n in (40, 7, 19)]
    tables = [[0, 1, 2], [3, 4], [5, 6]]
    runner.forward([SeqChunk(p, 0, t, i) for i, (p, t) in enumerate(zip(prompts, tables, strict=True))])
    # A mixed step: seq 0 decodes, seq 1 prefills a chunk, seq 2 decodes.
    chunks = [
        SeqChunk([11], 40, tables[0], 0),
        SeqChunk(tokens(9, cfg.vocab_size, seed=99), 7, tables[1], 1),
        SeqChunk([12], 19, tables[2], 2),
    ]
    batched = runner.forward(chunks)
    for i, chunk in enumerate(chunks):
        alone = new_runner(cfg, model)
        alone.forward([SeqChunk(prompts[i], 0, tables[i], i)])
        torch.testing.assert_close(alone.forward([chunk])[0], batched[i], atol=TOLERANCE, rtol=0)


def test_prefix_continuation_from_copied_state(loaded) -> None:
    """A second request reuses the first's KV pages and a copy of its state checkpoint."""
    cfg, model = loaded
    runner = new_runner(cfg, model)
    prefix, suffix = tokens(32, cfg.vocab_size, seed=5), tokens(10, cfg.vocab_size, seed=6)
    runner.forward([SeqChunk(prefix, 0, [7, 8], 0)])
    runner.cache.copy_state(0, 5)
    continued = runner.forward([SeqChunk(suffix, 32, [7, 8, 9], 5)], all_logits=True)
    whole = new_runner(cfg, model).forward([SeqChunk(prefix + suffix, 0, [0, 1, 2], 0)], all_logits=True)
    torch.testing.assert_close(continued, whole[32:], atol=TOLERANCE, rtol=0)


def test_start_pos_zero_ignores_stale_slot_contents(loaded) -> None:
    cfg, model = loaded
    runner = new_runner(cfg, model)
    ids = tokens(20, cfg.vocab_size, seed=3)
    first = runner.forward([SeqChunk(ids, 0, [0, 1], 0)])
    again = runner.forward([SeqChunk(ids, 0, [0, 1], 0)])  # slot 0 now holds a used state
    torch.testing.assert_close(first, again, atol=0, rtol=0)


def test_layer_callback_runs_once_per_layer_in_order(loaded) -> None:
    cfg, model = loaded
    seen: list[int] = []
    new_runner(cfg, model).forward([SeqChunk([1, 2, 3], 0, [0], 0)], layer_callback=seen.append)
    assert seen == list(range(cfg.num_hidden_layers))


def test_cache_layout_follows_the_contract(loaded) -> None:
    cfg, _ = loaded
    cache = CacheTensors.allocate(cfg, num_pages=5, num_slots=3, block_size=BLOCK)
    assert cache.kv.shape == (cfg.num_attention_layers, 5, 2, BLOCK, cfg.num_key_value_heads, cfg.head_dim)
    assert cache.conv.shape == (cfg.num_linear_layers, 3, cfg.conv_dim, cfg.linear_conv_kernel_dim - 1)
    assert cache.ssm.shape == (
        cfg.num_linear_layers,
        3,
        cfg.linear_num_value_heads,
        cfg.linear_key_head_dim,
        cfg.linear_value_head_dim,
    )
    assert cache.ssm.dtype == torch.float32
    assert set(cache.regions()) == {"kv", "conv", "ssm"}
    assert cache.bytes_per_page() * 5 == cache.kv.numel() * cache.kv.element_size()
    assert cache.bytes_per_slot() * 3 == cache.conv.nbytes + cache.ssm.nbytes
    assert CacheTensors.bytes_for(cfg, BLOCK) == (cache.bytes_per_page(), cache.bytes_per_slot())
    cache.ssm[:, 1] = 1.0
    cache.copy_state(1, 2)
    assert torch.equal(cache.ssm[:, 2], cache.ssm[:, 1])
    cache.zero_state(2)
    assert not cache.ssm[:, 2].any()
    with pytest.raises(IndexError, match="slot 3"):
        cache.zero_state(3)


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ([], "at least one chunk"),
        ([SeqChunk([], 0, [0], 0)], "at least one token"),
        ([SeqChunk([1] * 17, 0, [0], 0)], "block_table has 1 pages"),
        ([SeqChunk([1], 0, [96], 0)], "outside"),
        ([SeqChunk([1], 0, [0], 8)], "state slot 8"),
        ([SeqChunk([1], 0, [0], 1), SeqChunk([2], 0, [1], 1)], "share a state slot"),
        ([SeqChunk([10**6], 0, [0], 0)], "token ids"),
    ],
)
def test_bad_chunks_raise_clear_errors(loaded, chunks, message: str) -> None:
    cfg, model = loaded
    with pytest.raises(ValueError, match=message):
        new_runner(cfg, model).forward(chunks)
