"""Decode with tensor / expert parallelism on this machine (gloo on the CPU, NCCL on GPUs): tok/s
of TP=1 beside tp/ep ranks, the collectives per step and per layer, and the time rank 0 spends in
them. Rank 0 runs here, the other ranks are spawned processes (`engine/parallel/ranks.py`).

On the CPU the ranks share the same cores, so the speed ratio shows the cost of communication and
not a speed-up; "comm s" is rank 0's wall time inside collectives, which includes waiting for the
slower rank. `python -m bench.decode --tp 2 [--ep 2] [--model DIR]` writes bench/results/decode_tp.json.
With `--spec K` both sides speculate with the MTP head (default model: the trained one), and the
table adds the mean tokens per verify; the collectives then include the head's and the verify's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.parallel.comm import close_comm, init_comm
from engine.parallel.ranks import free_port, init_method_for, spawn_followers
from engine.sampling_params import SamplingParams

RESULTS = Path(__file__).parent / "results" / "decode_tp.json"
PROMPT_TOKENS = 32


def _decode(engine: LLMEngine, batch: int, tokens: int, tag: str) -> dict:
    """Prefill `batch` requests, then time decode alone; collectives counted over decode steps."""
    params = SamplingParams(temperature=0.0, max_tokens=tokens + 1, ignore_eos=True)
    vocab = engine.model_config.vocab_size
    for i in range(batch):
        engine.add_request(
            f"{tag}-{batch}-{i}", [(7 * i + 13 * j) % vocab for j in range(PROMPT_TOKENS)], params
        )
    produced = 0
    while produced < batch:
        produced += sum(len(o.new_token_ids) for o in engine.step())
    engine.comm.reset_counters()
    start, generated, steps = time.perf_counter(), 0, 0
    while engine.has_unfinished_requests():
        generated += sum(len(o.new_token_ids) for o in engine.step())
        steps += 1
    seconds = time.perf_counter() - start
    comm = engine.comm
    layers = engine.model_config.num_hidden_layers
    spec = engine.metrics().get("spec_mean_acceptance_length")
    return {
        "batch": batch,
        "tok_s": generated / seconds,
        "spec_tokens_per_verify": spec,  # None without speculation (cumulative over the engine)
        "steps": steps,
        "all_reduces_per_step": comm.all_reduces / steps,
        "all_reduces_per_layer": (comm.all_reduces / steps - 1) / layers,  # less the embedding's one
        "all_gathers_per_step": comm.all_gathers / steps,
        "broadcasts_per_step": comm.broadcasts / steps,
        "comm_s": comm.seconds,
        "comm_fraction": comm.seconds / seconds,
    }


def tp_bench(
    model_dir: Path,
    tp: int,
    ep: int,
    batches: list[int],
    tokens: int,
    out_path: Path = RESULTS,
    spec_tokens: int = 0,
) -> dict:
    base = dict(enable_prefix_cache=False, max_num_seqs=max(batches), num_speculative_tokens=spec_tokens)
    single = LLMEngine(model_dir, EngineConfig(**base))
    _decode(single, 1, 4, "warm")
    rows_single = [_decode(single, b, tokens, "tp1") for b in batches]
    del single
    config = EngineConfig(**base, tp=tp, ep=ep)
    port = free_port()
    procs = spawn_followers(model_dir, config, port)
    comm = init_comm(0, config.parallel.world_size, "cpu", init_method_for(port))
    try:
        engine = LLMEngine(model_dir, config, comm=comm)
        _decode(engine, 1, 4, "warm")
        rows = [_decode(engine, b, tokens, "tp") for b in batches]
        engine.stop_followers()
    finally:
        close_comm()
        for proc in procs:
            proc.join(60)
    result = {
        "model": str(model_dir),
        "tp": tp,
        "ep": ep,
        "tokens": tokens,
        "spec_tokens": spec_tokens,
        "tp1": rows_single,
        "parallel": rows,
    }
    print(
        f"model {Path(model_dir).name}  tp={tp} ep={ep}  {tokens} decode tokens per request"
        + (f"  speculation k={spec_tokens}" if spec_tokens else "")
    )
    print(
        f"{'batch':>5} {'tp1 tok/s':>10} {'tok/s':>8} {'AR/step':>8} {'AR/layer':>9} {'AG/step':>8} "
        f"{'bcast/step':>10} {'comm s':>7} {'comm %':>7}" + (f" {'tok/verify':>10}" if spec_tokens else "")
    )
    for one, r in zip(rows_single, rows, strict=True):
        print(
            f"{r['batch']:>5} {one['tok_s']:>10.1f} {r['tok_s']:>8.1f} {r['all_reduces_per_step']:>8.1f} "
            f"{r['all_reduces_per_layer']:>9.2f} {r['all_gathers_per_step']:>8.1f} {r['broadcasts_per_step']:>10.1f} "
            f"{r['comm_s']:>7.2f} {100 * r['comm_fraction']:>6.0f}%"
            + (f" {r['spec_tokens_per_verify']:>10.2f}" if spec_tokens else "")
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    return result
