"""Resharding on arrival: the KV pages and DeltaNet state that prefill ranks of one TP degree send
land in decode ranks of another as each rank's own slice, through real transfer backends (`local`)
and `worker/rank_transfers.py`. The reference slices a full cache by hand: kv heads, [q | k | v]
conv channels and value heads split contiguously, one kv head per rank when there are fewer."""

from __future__ import annotations

import pytest
import torch

from engine.model_config import ModelConfig
from engine.model_runner import SeqChunk
from kvtransfer.local import LocalBackend
from rpc.errors import TransferFailed
from tests.helpers.checkpoints import tiny_checkpoint
from worker.rank_transfers import RankTransfers, StagingFull, StagingSize
from worker.shard_transfer import envelope, shard_pairs

BLOCK = 16
KEY = 12345  # the watch key of the request being sent
SRC_PAGES, SRC_SLOT = [0, 1, 2], 1
DST_PAGES, DST_SLOT, SKIP = [5, 2, 7], 3, 1  # the receiver already holds the first block


@pytest.fixture(scope="module")
def config() -> ModelConfig:
    return ModelConfig.from_json(tiny_checkpoint("qwen3_next"))


def full_cache(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "kv": torch.randn(cfg.num_attention_layers, 8, 2, BLOCK, cfg.num_key_value_heads, cfg.head_dim, generator=gen),
        "conv": torch.randn(cfg.num_linear_layers, 4, cfg.conv_dim, cfg.linear_conv_kernel_dim - 1, generator=gen),
        "ssm": torch.randn(
            cfg.num_linear_layers, 4, cfg.linear_num_value_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim,
            generator=gen,
        ),
    }  # fmt: skip


def by_hand(cfg: ModelConfig, full: dict[str, torch.Tensor], tp: int, rank: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s slice of the full cache, written out independently of engine/parallel/shard.py."""
    kv_heads = cfg.num_key_value_heads
    if kv_heads >= tp:
        per = kv_heads // tp
        kv = full["kv"][:, :, :, :, rank * per : (rank + 1) * per]
    else:
        head = rank * kv_heads // tp
        kv = full["kv"][:, :, :, :, head : head + 1]
    kd, vd = cfg.linear_key_dim, cfg.linear_value_dim
    q, k, v = torch.split(full["conv"], [kd, kd, vd], dim=2)
    conv = torch.cat([part.chunk(tp, dim=2)[rank] for part in (q, k, v)], dim=2)
    ssm = full["ssm"].chunk(tp, dim=2)[rank]
    return {"kv": kv.contiguous(), "conv": conv.contiguous(), "ssm": ssm.contiguous()}


def ranks(cfg, caches: list[dict[str, torch.Tensor]], tp: int, staging_tokens: int = 256) -> list[RankTransfers]:
    staging = StagingSize(staging_tokens, 2)
    return [RankTransfers(LocalBackend(), cache, cfg, tp, r, staging, BLOCK) for r, cache in enumerate(caches)]


@pytest.mark.parametrize(("src_tp", "dst_tp"), [(1, 2), (2, 2), (2, 1)], ids=["split", "same", "merge"])
def test_every_decode_rank_receives_its_own_slice(config, src_tp, dst_tp):
    full = full_cache(config)
    senders = ranks(config, [by_hand(config, full, src_tp, s) for s in range(src_tp)], src_tp)
    empty = [{n: torch.zeros_like(t) for n, t in by_hand(config, full, dst_tp, r).items()} for r in range(dst_tp)]
    receivers = ranks(config, empty, dst_tp)

    pairs = [p for rx in receivers for p in rx.expect("t1", src_tp, DST_PAGES, DST_SLOT, SKIP, 10.0)]
    pairs = shard_pairs(envelope(pairs, receiver_tp=dst_tp, sender_tp=src_tp), src_tp)  # over the wire
    staged = any(rx.pools for rx in receivers)
    assert staged == (src_tp != dst_tp)  # the same layout goes straight into the cache
    for sender in senders:
        sender.open_sends(KEY, pairs)
        # the first two blocks are written by every layer before the prefill ends: posted early
        early = SeqChunk([3] * 2 * BLOCK, 0, SRC_PAGES[:2], SRC_SLOT, watch_key=KEY)
        for layer in range(config.num_hidden_layers):
            sender.layer_done(early, layer)
        assert all(t.posted_blocks == [2] * config.num_attention_layers for t in sender.sends[KEY].targets)
        sender.finish_sends(KEY, SRC_PAGES, SRC_SLOT, first_token=42)

    for r, rx in enumerate(receivers):
        assert rx.poll("t1") == {"status": "done", "first_token": 42}
        want, got = by_hand(config, full, dst_tp, r), rx.cache
        fresh_src, fresh_dst = SRC_PAGES[SKIP:], DST_PAGES[SKIP:]
        torch.testing.assert_close(got["kv"][:, fresh_dst], want["kv"][:, fresh_src], rtol=0, atol=0)
        assert not got["kv"][:, DST_PAGES[:SKIP]].any()  # skipped: held already, never written
        for region in ("conv", "ssm"):
            torch.testing.assert_close(got[region][:, DST_SLOT], want[region][:, SRC_SLOT], rtol=0, atol=0)
        rx.forget("t1")
        if rx.pools:
            pool = rx.pools[src_tp]
            assert all(len(free) == pool.tensors[name].shape[1] for name, free in pool.free.items())


def test_a_sender_of_another_layout_fails_the_transfer_with_the_reason(config):
    full = full_cache(config)
    receiver = ranks(config, [{n: torch.zeros_like(t) for n, t in by_hand(config, full, 2, 0).items()}], 2)[0]
    pairs = receiver.expect("t2", 2, DST_PAGES, DST_SLOT, SKIP, 10.0)
    # rank 1 of a tp=2 prefill worker sends what rank 0 was to send: same shapes, wrong heads
    impostor = RankTransfers(LocalBackend(), by_hand(config, full, 2, 1), config, 2, 1, StagingSize(), BLOCK)
    impostor.open_sends(KEY, [dict(p, src_rank=1) for p in pairs])
    impostor.finish_sends(KEY, SRC_PAGES, SRC_SLOT, first_token=7)
    polled = receiver.poll("t2")
    assert polled["status"] == "failed" and "tp=2,rank=0" in polled["reason"] and "tp=2,rank=1" in polled["reason"]


def test_staging_too_small_is_refused_with_a_retry_not_a_partial_transfer(config):
    full = full_cache(config)
    cache = {n: torch.zeros_like(t) for n, t in by_hand(config, full, 2, 0).items()}
    receiver = ranks(config, [cache], 2, staging_tokens=BLOCK)[0]  # one staging page
    with pytest.raises(StagingFull, match="--reshard-staging-tokens"):
        receiver.expect("t3", 1, DST_PAGES, DST_SLOT, 0, 10.0)
    assert "t3" not in receiver.receives
    assert all(len(free) == receiver.pools[1].tensors[name].shape[1] for name, free in receiver.pools[1].free.items())


def test_a_prefill_worker_of_another_tp_than_reserved_for_is_refused(config):
    receiver = ranks(config, [{n: torch.zeros_like(t) for n, t in by_hand(config, full_cache(config), 2, 0).items()}], 2)[0]
    message = envelope(receiver.expect("t4", 1, DST_PAGES, DST_SLOT, 0, 10.0), receiver_tp=2, sender_tp=1)
    with pytest.raises(TransferFailed, match="sender of tp=1, this prefill worker has tp=2"):
        shard_pairs(message, 2)
