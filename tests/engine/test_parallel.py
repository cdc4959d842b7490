"""Tensor and expert parallelism on the CPU (gloo, 2 ranks, tiny fp32 checkpoints of both families):
TP=2, EP=2 and TP=2+EP=2 over the same two ranks give the greedy tokens of TP=1 and logits within
1e-5 (rtol and atol), through a pool tight enough to preempt and a second turn served from the prefix cache;
with speculative decoding (the MTP head sharded like the main layers) too.
Rank 0 runs in this process; rank 1 is a spawned process running the real follower loop."""

from __future__ import annotations

import dataclasses
import json
from functools import cache

import pytest
import torch

from baton import sizing
from engine.cache.tensors import CacheTensors
from engine.engine_config import EngineConfig
from engine.identity import checkpoint_files
from engine.llm_engine import LLMEngine
from engine.model_config import ModelConfig
from engine.parallel.comm import close_comm, init_comm
from engine.parallel.config import ParallelConfig
from engine.parallel.ranks import free_port, init_method_for
from engine.parallel.shard import shard_weights, vocab_rows
from engine.parallel.step_sync import watch_key
from engine.safetensors_stream import read_header
from engine.sampling_params import SamplingParams
from engine.weight_placer import WeightPlacer
from tests.engine.spec_helpers import use_oracle
from tests.helpers.checkpoints import tiny_checkpoint
from tests.helpers.engine_runs import run_recording_logits
from tests.helpers.follower_hooks import RecordingHooks
from tests.helpers.graphs import attach_capture_free_graphs
from tests.helpers.rank_group import leader_engine

pytestmark = pytest.mark.timeout(300)

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
# 14 pages of 16 tokens cannot hold four sequences of up to 88 tokens: preemption must happen.
TIGHT = dict(num_pages=14, prefill_chunk_size=16, max_num_seqs=4, checkpoint_every_blocks=1)
# Speculation finishes sequences in fewer steps: 10 pages still preempt (measured: 2 preemptions).
SPEC_TIGHT = dict(TIGHT, num_pages=10, num_speculative_tokens=2)


def _prompt(length: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 1000, (length,), generator=g).tolist()


def _run(engine: LLMEngine, prompts: dict[str, list[int]], logits: dict[str, list[torch.Tensor]]):
    return run_recording_logits(engine, prompts, GREEDY, logits)


def first_turn() -> dict[str, list[int]]:
    return {f"r{n}": _prompt(n, seed=n) for n in (5, 40, 17, 64)}


def second_turn(first: dict[str, list[int]], tokens: dict[str, list[int]]) -> dict[str, list[int]]:
    return {"turn2": first["r40"] + tokens["r40"] + _prompt(9, seed=99)}


def scenario(engine: LLMEngine):
    """Four requests through a tight pool, then a second turn extending one of them."""
    logits: dict[str, list[torch.Tensor]] = {}
    first = first_turn()
    tokens = _run(engine, first, logits)
    tokens.update(_run(engine, second_turn(first, tokens), logits))
    m = engine.metrics()
    return tokens, {k: torch.stack(v) for k, v in logits.items()}, m["num_preemptions"], m["cached_tokens"]


@cache
def plain_scenario(model_type: str):
    """TP=1 without speculation: what every parallel run must reproduce (computed once per module)."""
    return scenario(LLMEngine(tiny_checkpoint(model_type), EngineConfig(**TIGHT)))


def run_parallel(model_dir, config: EngineConfig, prepare=None):
    """`scenario` on rank 0 of a group whose other ranks are spawned followers; `prepare(engine)`
    runs first (and its result comes back second)."""
    with leader_engine(model_dir, config) as engine:
        prepared = prepare(engine) if prepare is not None else None
        result = scenario(engine)
    return result if prepare is None else (result, prepared)


@pytest.mark.parametrize(
    ("model_type", "tp", "ep"),
    [
        ("qwen3_next", 2, 1),
        ("qwen3_next", 1, 2),
        ("qwen3_next", 2, 2),
        ("qwen3_5_moe_text", 2, 2),
        ("qwen3_5_text", 2, 1),
    ],
)
def test_two_ranks_equal_one(model_type: str, tp: int, ep: int) -> None:
    model_dir = tiny_checkpoint(model_type)
    tokens, logits, preemptions, cached = plain_scenario(model_type)
    assert preemptions > 0 and cached > 0  # the scenario exercises both
    p_tokens, p_logits, p_preemptions, p_cached = run_parallel(model_dir, EngineConfig(**TIGHT, tp=tp, ep=ep))
    assert p_tokens == tokens
    assert (p_preemptions, p_cached) == (preemptions, cached)
    for rid, expected in logits.items():
        # fp32 partial sums added in another order: measured max |diff| 2e-6 .. 1.1e-5 on logits ~3.
        torch.testing.assert_close(p_logits[rid], expected, rtol=1e-5, atol=1e-5, msg=rid)


def _speculate(engine: LLMEngine, reference: dict[str, list[int]]) -> dict:
    """Drafts right up to a varying index (every acceptance length occurs; the real MTP head still
    runs every draft step, over both ranks) and a record of the MTP head's logits."""
    first = first_turn()
    use_oracle(engine, reference, {**first, **second_turn(first, reference)})
    head, seen = engine.spec.drafter.head, {"mtp_logits": []}
    compute = head.logits

    def recording(out: torch.Tensor) -> torch.Tensor:
        logits = compute(out)
        seen["mtp_logits"].append(logits.clone())
        return logits

    head.logits = recording
    seen["metrics"] = engine.metrics  # read after the scenario
    return seen


@cache
def one_rank_speculation():
    engine = LLMEngine(tiny_checkpoint("qwen3_next"), EngineConfig(**SPEC_TIGHT))
    seen = _speculate(engine, plain_scenario("qwen3_next")[0])
    return scenario(engine), seen


@pytest.mark.parametrize(("tp", "ep"), [(2, 1), (1, 2), (2, 2)])
def test_speculation_over_two_ranks_equals_one_rank_without(tp: int, ep: int) -> None:
    """k=2 with the MTP head sharded like the main layers: the greedy tokens of TP=1 without
    speculation (a preempting pool and a prefix-cache turn included), and the head's own logits
    equal to a one-rank speculating engine's (so its shards compute the whole head)."""
    model_dir = tiny_checkpoint("qwen3_next")
    tokens = plain_scenario("qwen3_next")[0]
    (one_tokens, *_), one_seen = one_rank_speculation()
    assert one_tokens == tokens
    config = EngineConfig(**SPEC_TIGHT, tp=tp, ep=ep)
    (p_tokens, _, preemptions, p_cached), seen = run_parallel(
        model_dir, config, lambda engine: _speculate(engine, tokens)
    )
    assert p_tokens == tokens
    m = seen["metrics"]()
    assert m["spec_verifies"] > 0 and m["spec_accepted"] > 0 and p_cached > 0 and preemptions > 0
    assert len(seen["mtp_logits"]) == len(one_seen["mtp_logits"]) > 0
    for mine, theirs in zip(seen["mtp_logits"], one_seen["mtp_logits"], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def _cfg(model_type: str = "qwen3_next") -> ModelConfig:
    return ModelConfig.from_json(tiny_checkpoint(model_type))


def test_bad_degrees_are_refused_with_a_message() -> None:
    with pytest.raises(ValueError, match="each must be 1 or the world size"):
        ParallelConfig(tp=2, ep=4)
    with pytest.raises(ValueError, match="positive integer"):
        EngineConfig(tp=0)
    with pytest.raises(ValueError, match="multiple of num_key_value_heads=2"):
        ParallelConfig(tp=3).local_config(_cfg())
    with pytest.raises(ValueError, match="num_experts=8 does not divide over 16 ranks"):
        ParallelConfig(ep=16).check_model(_cfg())
    with pytest.raises(ValueError, match="needs rank 0"):
        LLMEngine(tiny_checkpoint("qwen3_next"), EngineConfig(tp=2))


def test_shards_reassemble_into_the_whole_tensors_with_replicated_kv_heads() -> None:
    """tp=4 over 2 kv heads: each rank keeps the kv head its q heads read; q, o, DeltaNet and MLP
    shards concatenate back to the whole weights."""
    # 4 DeltaNet key and value heads so they divide over 4 ranks; 2 kv heads stay 2.
    cfg = dataclasses.replace(_cfg(), linear_num_key_heads=4, linear_num_value_heads=4)
    torch.manual_seed(0)
    hidden, dim = cfg.hidden_size, cfg.head_dim
    whole = {
        "layers.3.self_attn.q_proj.weight": torch.randn(cfg.num_attention_heads * dim * 2, hidden),
        "layers.3.self_attn.k_proj.weight": torch.randn(cfg.num_key_value_heads * dim, hidden),
        "layers.3.self_attn.o_proj.weight": torch.randn(hidden, cfg.num_attention_heads * dim),
        "layers.0.linear_attn.in_proj_qkv.weight": torch.randn(cfg.conv_dim, hidden),
        "layers.0.mlp.shared_expert.down_proj.weight": torch.randn(hidden, 64),
        "embed_tokens.weight": torch.randn(cfg.vocab_size - 1, hidden),  # uneven vocab: padded
    }
    p = ParallelConfig(tp=4)
    shards = [shard_weights(cfg, dict(whole), p, r) for r in range(4)]
    cat = lambda name, dim_: torch.cat([s[name] for s in shards], dim=dim_)  # noqa: E731
    assert torch.equal(cat("layers.3.self_attn.q_proj.weight", 0), whole["layers.3.self_attn.q_proj.weight"])
    assert torch.equal(cat("layers.3.self_attn.o_proj.weight", 1), whole["layers.3.self_attn.o_proj.weight"])
    k = whole["layers.3.self_attn.k_proj.weight"]
    for r, shard in enumerate(shards):  # q heads (r) of 4 read kv head r // 2 of 2
        assert torch.equal(shard["layers.3.self_attn.k_proj.weight"], k[(r // 2) * dim : (r // 2 + 1) * dim])
    down = whole["layers.0.mlp.shared_expert.down_proj.weight"]
    assert torch.equal(cat("layers.0.mlp.shared_expert.down_proj.weight", 1), down)
    kd, vd = cfg.linear_key_dim, cfg.linear_value_dim
    qkv = [
        torch.split(s["layers.0.linear_attn.in_proj_qkv.weight"], [kd // 4, kd // 4, vd // 4]) for s in shards
    ]
    for part in range(3):
        expected = torch.split(whole["layers.0.linear_attn.in_proj_qkv.weight"], [kd, kd, vd])[part]
        assert torch.equal(torch.cat([q[part] for q in qkv]), expected)
    rows = torch.cat([s["embed_tokens.weight"] for s in shards])
    assert torch.equal(rows[: cfg.vocab_size - 1], whole["embed_tokens.weight"])
    assert not rows[cfg.vocab_size - 1 :].any()
    assert vocab_rows(whole["embed_tokens.weight"], 4, 3).shape[0] == -(-(cfg.vocab_size - 1) // 4)


@pytest.mark.parametrize(("tp", "ep"), [(2, 1), (1, 2), (2, 2)])
def test_baton_size_per_gpu_equals_a_real_shard(tp: int, ep: int) -> None:
    """`baton size --tp --ep` per-GPU weights = the elements rank 0's shard holds, MTP head included."""
    model_dir = tiny_checkpoint("qwen3_5_moe_text")
    cfg = ModelConfig.from_json(model_dir)
    placer = WeightPlacer(model_dir, cfg, torch.float32, torch.device("cpu"), _headers(model_dir))
    placer.run(None, False)
    weights, extra = placer.finish()
    assert extra, "the checkpoint has an MTP head"
    shard = shard_weights(cfg, {**weights, **extra}, ParallelConfig(tp, ep), rank=0)
    raw = json.loads((model_dir / "config.json").read_text())
    shape = sizing.shape_from_config(raw)
    gpu = sizing.per_gpu(shape, tp=tp, ep=ep, weight_dtype_bytes=1, dtype_bytes_=4, ssm_dtype_bytes=4)
    assert gpu.weight_bytes == sum(t.numel() for t in shard.values())
    local = ParallelConfig(tp, ep).local_config(cfg)
    page, slot = CacheTensors.bytes_for(local, block_size=1)
    assert (gpu.kv_bytes_per_token, gpu.state_slot_bytes) == (page, slot)


def _headers(model_dir):
    return [read_header(model_dir / name) for name in checkpoint_files(model_dir)]


def _one_rank_group_run(device: str, model_type: str = "qwen3_next", options: dict = TIGHT):
    """The whole TP path over a group of one rank (every collective runs, over one rank)."""
    comm = init_comm(0, 1, device, init_method_for(free_port()), timeout_s=120)
    try:
        engine = LLMEngine(tiny_checkpoint(model_type), EngineConfig(**options, device=device), comm=comm)
        result = scenario(engine)
        counted = (comm.all_reduces, comm.all_gathers, comm.broadcasts)
        graphs = engine.runner.graphs
    finally:
        close_comm()
    return result, counted, graphs


def test_a_one_rank_group_runs_every_collective_and_equals_the_plain_engine() -> None:
    tokens, logits, *_ = plain_scenario("qwen3_next")
    (p_tokens, p_logits, *_), (all_reduces, all_gathers, broadcasts), _ = _one_rank_group_run("cpu")
    assert p_tokens == tokens
    assert all_reduces > 0 and all_gathers > 0 and broadcasts > 0
    for rid, expected in logits.items():
        torch.testing.assert_close(p_logits[rid], expected, rtol=0, atol=0)


@pytest.mark.parametrize("options", [TIGHT, SPEC_TIGHT], ids=["decode", "verify"])
def test_a_one_rank_group_runs_decode_and_verify_steps_through_the_graph_runner(options: dict) -> None:
    """The GPU item's path on the CPU: a one-rank group whose pure decode (and k=2 verify) steps go
    through a capture-free DecodeGraphs (the static-buffer forward a graph captures, all-reduces
    included), with the plain engine's tokens."""
    comm = init_comm(0, 1, "cpu", init_method_for(free_port()), timeout_s=120)
    try:
        engine = LLMEngine(tiny_checkpoint("qwen3_next"), EngineConfig(**options), comm=comm)
        k = engine.config.num_speculative_tokens
        graphs, kinds = attach_capture_free_graphs(engine)
        tokens = scenario(engine)[0]
        all_reduces = comm.all_reduces
    finally:
        close_comm()
    assert tokens == plain_scenario("qwen3_next")[0]
    assert all_reduces > 0 and kinds.count(k + 1) > 0  # decode (k = 0) / verify steps went through it


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a cuda device")
def test_tp_path_under_nccl_on_one_gpu_replays_cuda_graphs_with_the_plain_engines_tokens() -> None:
    plain = scenario(LLMEngine(tiny_checkpoint("qwen3_next"), EngineConfig(**TIGHT, device="cuda")))
    (tokens, *_), (all_reduces, _, _), graphs = _one_rank_group_run("cuda")
    # Captured (a failed capture falls back to eager runs that count as replays too), then replayed.
    assert graphs is not None and graphs.capture_error is None and graphs.graphs, "graphs were captured"
    assert graphs.replays > 0, "decode steps replay CUDA graphs"
    assert all_reduces > 0
    assert tokens == plain[0]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a cuda device")
def test_tp_path_under_nccl_on_one_gpu_speculates_with_verify_graphs() -> None:
    """k=2 over a one-rank NCCL group: the verify step's graph holds the all-reduces, the lm head
    and the MTP head gather eagerly, and no token changes."""
    plain = scenario(LLMEngine(tiny_checkpoint("qwen3_next"), EngineConfig(**TIGHT, device="cuda")))
    (tokens, *_), _, graphs = _one_rank_group_run("cuda", options=SPEC_TIGHT)
    assert graphs is not None and graphs.capture_error is None
    assert any(steps == 3 for _, steps in graphs.graphs), "verify graphs were captured"
    assert tokens == plain[0]


@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5_moe_text"])  # per-expert and fused experts
@pytest.mark.parametrize(("tp", "ep"), [(2, 1), (1, 2), (2, 2)])
def test_the_loader_cuts_each_tensor_as_it_arrives_into_the_same_shard(
    model_type: str, tp: int, ep: int
) -> None:
    model_dir = tiny_checkpoint(model_type)
    cfg = ModelConfig.from_json(model_dir)
    whole = WeightPlacer(model_dir, cfg, torch.float32, torch.device("cpu"), _headers(model_dir))
    whole.run(None, False)
    weights, whole_extra = whole.finish()
    assert whole_extra, "the tiny checkpoints carry an MTP head"
    for rank in range(2):
        expected = shard_weights(cfg, dict(weights), ParallelConfig(tp, ep), rank)
        expected_extra = shard_weights(cfg, dict(whole_extra), ParallelConfig(tp, ep), rank)  # the MTP head
        streaming = WeightPlacer(model_dir, cfg, torch.float32, torch.device("cpu"), _headers(model_dir))
        streaming.shard_for(ParallelConfig(tp, ep), rank)
        streaming.run(None, False)
        shard, extra = streaming.finish()
        assert sorted(shard) == sorted(expected) and sorted(extra) == sorted(expected_extra)
        for name, tensor in [*expected.items(), *expected_extra.items()]:
            assert torch.equal({**shard, **extra}[name], tensor), name


def test_follower_ranks_see_each_layer_of_a_watched_sequence_as_rank_0_does():
    """A sequence with a layer callback on rank 0 carries its watch key in the step broadcast; the
    follower calls its layer hook after the same layers of the same chunks, with that layer's KV
    already in its cache (what the worker's layer-by-layer transfer posts); unwatched ones never."""
    model_dir = tiny_checkpoint("qwen3_next")
    config = EngineConfig(tp=2, prefill_chunk_size=16, max_num_seqs=4)
    with leader_engine(model_dir, config, RecordingHooks) as engine:
        mine: list[list[int]] = []
        params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
        engine.add_request("watched", _prompt(40, seed=1), params,
                           layer_callback=lambda layer, start, end: mine.append([layer, start, end]))  # fmt: skip
        engine.add_request("plain", _prompt(25, seed=2), params)
        while engine.has_unfinished_requests():
            engine.step()
        (report,) = engine.call_followers(b"report")
    seen = json.loads(report)
    assert {key for key, *_ in seen} == {watch_key("watched")}
    assert [[layer, start, end] for _, layer, start, end, _ in seen] == mine
    assert len(mine) > ModelConfig.from_json(model_dir).num_hidden_layers  # several chunks, every layer
    assert all(written for *_, written in seen)
