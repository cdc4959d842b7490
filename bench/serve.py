"""`python -m bench.serve`: what disaggregation costs at the first token, and what the router costs.

1. TTFT of the same-length fresh prompt (default 4K tokens), disaggregated (prefill worker →
   kvtransfer → decode worker) vs colocated (the decode worker prefills), measured interleaved on
   one pool of 1 prefill + 1 decode worker through two routers that differ only in their
   conditional-disaggregation threshold. Every prompt is new (no cache hits).
2. The router's own overhead per request for a 32K-token prompt: validating the request, hashing
   its blocks, the index lookup (an embedded index holding 2k sessions) and the policy — timed
   inside the router process, p50/p99 over many requests.
3. What the OpenAI HTTP face adds per request beside gRPC (`bench/http_overhead.py`): both faces
   in front of an instant core (the faces' own cost), and end to end on the workers.
4. Small-request latency while a huge (7.5 MB) prompt tokenizes in the router (bench/tokenize_stall.py),
   with the GIL-releasing tokenizer path and, for comparison, with one that holds the GIL.
Prints a table and writes bench/results/serve.json.

`--device cuda`: both workers run their engines on the one GPU as two processes, each with its own
`--gpu-memory-utilization` fraction; the KV pages and state ship from GPU memory (tcp stages them
through its pinned ring). `--skip-router --http-requests 0` keeps only part 1 (the GPU check).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from tqdm import tqdm

from bench.http_overhead import face_overhead, http_overhead
from bench.tokenize_stall import print_table as print_tokenize_stall
from bench.tokenize_stall import tokenize_stall

RESULTS = Path(__file__).parent / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def worker_engine_args(device: str, gpu_memory_utilization: float) -> tuple[str, ...]:
    """Engine flags for both workers (the workers' own flag names)."""
    if device == "cpu":
        return ()
    return ("--device", device, "--gpu-memory-utilization", str(gpu_memory_utilization))


def ttft_side_by_side(
    model: str, prompt_tokens: int, repeats: int, transfer: str, worker_args: tuple[str, ...] = ()
) -> dict:
    from baton.client import BatonClient
    from engine.model_config import ModelConfig
    from router.config import RouterConfig
    from router.local_cluster import ClusterSpec, LocalCluster
    from router.server import start_router

    vocab = ModelConfig.from_json(Path(model) / "config.json").vocab_size
    rng = random.Random(0)
    disagg_config = RouterConfig(model=model, listen="127.0.0.1:0", local_prefill_threshold=0)
    spec = ClusterSpec(model, transfer=transfer, memory_gb=2.0, worker_args=worker_args, router=disagg_config)
    results: dict[str, list[float]] = {"disaggregated": [], "colocated": []}
    with LocalCluster(spec) as cluster:
        colocated_config = RouterConfig(  # the cluster's token: worker RPCs demand it
            model=model, listen="127.0.0.1:0", local_prefill_threshold=10**9,
            cluster=cluster.router.core.config.cluster,
        )  # fmt: skip
        colocated_router = start_router(colocated_config, cluster.pool)
        colocated_router.core.registry.wait_until_ready(1, 1)
        clients = {
            "disaggregated": BatonClient(cluster.address),
            "colocated": BatonClient(colocated_router.address),
        }
        for client in clients.values():  # warm up both paths (allocations, first transfer)
            client.generate(token_ids=[rng.randrange(vocab) for _ in range(256)], temperature=0.0, max_tokens=2)
        for _ in tqdm(range(repeats), desc=f"TTFT {prompt_tokens} tokens", unit="pair"):
            for mode in ("disaggregated", "colocated"):
                prompt = [rng.randrange(vocab) for _ in range(prompt_tokens)]
                result = clients[mode].generate(token_ids=prompt, temperature=0.0, max_tokens=1)
                assert result.cached_tokens == 0
                results[mode].append(result.ttft_s)
        for client in clients.values():
            client.close()
        colocated_router.stop()
    summary = {mode: {"p50_s": statistics.median(v), "min_s": min(v), "samples": v} for mode, v in results.items()}
    summary["ratio_p50"] = summary["disaggregated"]["p50_s"] / summary["colocated"]["p50_s"]
    return summary


def router_overhead(model: str, prompt_tokens: int, requests: int, sessions: int = 2000, workers: int = 8) -> dict:
    from baton_pb.v1 import common_pb2, public_pb2
    from engine.cache.hashing import block_hashes, cache_extra
    from prefix_index.base import IndexEvent
    from prefix_index.embedded import EmbeddedPrefixIndex
    from router.config import RouterConfig
    from router.core import RouterCore
    from router.pools.static import StaticPool
    from router.registry import WorkerHandle

    index = EmbeddedPrefixIndex()
    core = RouterCore(RouterConfig(model=model, listen="127.0.0.1:0"), StaticPool([], []), index)
    vocab, block = core.model_config.vocab_size, core.config.block_size
    rng = random.Random(1)
    shared = [rng.randrange(vocab) for _ in range(prompt_tokens // 2)]
    extra = cache_extra(core.model_id, "")
    for session in range(sessions):  # each session: the shared half + a private half, on one worker
        tokens = shared + [rng.randrange(vocab) for _ in range(256)]
        hashes = block_hashes(tokens, block, extra=extra)
        worker = f"decode-{session % workers}"
        index.heartbeat(worker, 1, ttl_s=3600)
        index.publish(worker, 1, core.model_id, [IndexEvent("stored", tuple(hashes), (hashes[-1],))])
    for w in range(workers):  # fake handles: the policy sees loads, no RPC is made
        handle = WorkerHandle.__new__(WorkerHandle)
        handle.__init__(f"127.0.0.1:{9000 + w}", "decode" if w % 2 else "prefill", None, None, None, None)
        handle.info.worker_id, handle.healthy = f"{handle.role}-{w}", True
        core.registry._workers[handle.address] = handle
    timings: dict[str, list[float]] = {"new_session": [], "next_turn": []}
    session_prompt = shared + [rng.randrange(vocab) for _ in range(prompt_tokens - len(shared) - 200 * requests)]
    for i in tqdm(range(2 * requests), desc=f"router overhead {prompt_tokens} tokens", unit="req"):
        kind = "new_session" if i % 2 == 0 else "next_turn"
        if kind == "new_session":
            prompt, session = shared + [rng.randrange(vocab) for _ in range(prompt_tokens - len(shared))], f"s{i}"
        else:  # one agent session: each turn resends everything plus ~200 new tokens
            session_prompt = session_prompt + [rng.randrange(vocab) for _ in range(200)]
            prompt, session = session_prompt, "agent"
        request = public_pb2.GenerateRequest(
            session_id=session, token_ids=common_pb2.TokenIds(ids=prompt), sampling=common_pb2.SamplingParams(max_tokens=16)
        )
        wire = request.SerializeToString()
        started = time.perf_counter()
        decoded = public_pb2.GenerateRequest.FromString(wire)  # what gRPC does before the handler
        from router.prompts import prepare

        prepared = prepare(
            decoded, core.tokenizer, request_id=f"r{i}", tenant="", vocab_size=vocab,
            max_context=10**9, default_max_tokens=16, max_tokens_limit=8192,
        )  # fmt: skip
        core.route(prepared, prepared.prompt)
        timings[kind].append(time.perf_counter() - started)
    result = {"prompt_tokens": prompt_tokens, "requests": requests, "index_sessions": sessions}
    for kind, values in timings.items():
        result[kind] = {"p50_ms": 1e3 * statistics.median(values), "p99_ms": 1e3 * percentile(values, 0.99)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="checkpoint dir (default: the small preset, written if missing)")
    parser.add_argument("--preset", default="small", choices=["tiny", "small"])
    parser.add_argument("--prompt-tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--transfer", default="tcp")
    parser.add_argument("--router-prompt-tokens", type=int, default=32768)
    parser.add_argument("--router-requests", type=int, default=200)
    parser.add_argument("--http-requests", type=int, default=200, help="pairs for the HTTP vs gRPC part; 0 = skip")
    parser.add_argument("--huge-prompt-mb", type=float, default=7.5, help="section 3: the huge prompt's size")
    parser.add_argument("--only", choices=["tokenize"], help="run one section alone")
    parser.add_argument("--device", default="cpu", help="the workers' engine device: cpu | cuda")
    parser.add_argument(
        "--gpu-memory-utilization", type=float, default=0.4, help="each worker's GPU fraction (with --device cuda)"
    )
    parser.add_argument("--skip-router", action="store_true", help="skip the router parts (overhead, tokenize stall)")
    parser.add_argument("--out", default=str(RESULTS / "serve.json"))
    parser.add_argument("--http-only", action="store_true", help="only part 3 (HTTP vs gRPC), to --out")
    parser.add_argument(
        "--spec-tokens",
        type=int,
        default=0,
        help="instead: served decode with vs without MTP speculation (K drafts) on the trained "
        "checkpoint (bench/serve_spec.py)",
    )
    args = parser.parse_args(argv)
    if args.spec_tokens:
        from bench.serve_spec import run as run_spec
        from engine.training.shipped import shipped_or_cached

        run_spec(args.model or str(shipped_or_cached()), args.spec_tokens)
        return 0
    model = args.model or str(_preset_checkpoint(args.preset))
    if args.http_only:
        return _http_only(model, args)
    stall = None if args.skip_router else tokenize_stall(model, args.huge_prompt_mb)  # a router part
    if stall is not None:
        print_tokenize_stall(stall)
    if args.only == "tokenize":
        _write(Path(args.out).with_name("serve_tokenize.json"), {"model": model, "tokenize_stall": stall})
        return 0
    engine_args = worker_engine_args(args.device, args.gpu_memory_utilization)
    ttft = ttft_side_by_side(model, args.prompt_tokens, args.repeats, args.transfer, engine_args)
    overhead = None if args.skip_router else router_overhead(model, args.router_prompt_tokens, args.router_requests)
    http = _http_parts(model, args.http_requests) if args.http_requests else None
    print(f"\nmodel {model}, transfer {args.transfer}, workers on {args.device}")
    print(f"{'mode':<16}{'TTFT p50 ms':>12}{'TTFT min ms':>12}")
    for mode in ("colocated", "disaggregated"):
        print(f"{mode:<16}{1e3 * ttft[mode]['p50_s']:>12.1f}{1e3 * ttft[mode]['min_s']:>12.1f}")
    print(f"disaggregated / colocated TTFT (p50): {ttft['ratio_p50']:.3f}  (aim <= 1.10)")
    for kind in ("new_session", "next_turn") if overhead else ():
        row = overhead[kind]
        print(f"router overhead, {overhead['prompt_tokens']}-token prompt, {kind}: p50 {row['p50_ms']:.2f} ms, "
              f"p99 {row['p99_ms']:.2f} ms  (aim p50 <= 2 ms)")  # fmt: skip
    _write(Path(args.out), {"model": model, "transfer": args.transfer, "device": args.device,
                            "prompt_tokens": args.prompt_tokens, "ttft": ttft, "router_overhead": overhead,
                            "http_overhead": http, "tokenize_stall": stall})  # fmt: skip
    return 0


def _http_only(model: str, args: argparse.Namespace) -> int:
    http = _http_parts(model, args.http_requests)
    _write(Path(args.out), {"model": model, "http_overhead": http})
    return 0


def _http_parts(model: str, requests: int) -> dict:
    faces = face_overhead(model, 10 * requests)
    served = http_overhead(model, requests)
    print(f"\nfaces alone (instant core, {faces['requests']} requests each): gRPC p50 {faces['grpc_p50_ms']:.3f} ms, "
          f"HTTP p50 {faces['http_p50_ms']:.3f} ms, HTTP adds {faces['added_p50_ms']:.3f} ms  (aim <= 1 ms); first "
          f"streamed event: gRPC {faces['grpc_first_p50_ms']:.3f} ms, SSE {faces['http_first_p50_ms']:.3f} ms, "
          f"HTTP adds {faces['added_first_p50_ms']:.3f} ms")
    print(f"on the workers ({model}, {served['prompt_tokens']}-token prompt, 1 token, {served['requests']} pairs): "
          f"gRPC p50 {served['grpc_p50_ms']:.2f} ms, HTTP p50 {served['http_p50_ms']:.2f} ms, paired difference "
          f"p50 {served['added_p50_ms']:.2f} ms; first streamed token adds p50 {served['added_ttft_p50_ms']:.2f} ms")
    return {"faces": faces, "served": served}  # fmt: skip


def _write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def _preset_checkpoint(preset: str) -> Path:
    from engine.make_model import make_model

    path = Path("checkpoints") / f"{preset}-qwen3_next"
    if not (path / "config.json").is_file():
        make_model(path, preset=preset, model_type="qwen3_next")
    return path


if __name__ == "__main__":
    raise SystemExit(main())
