"""`python -m bench.serve --spec-tokens K`: MTP speculation over the served path, side by side.

Two local clusters (router + 1 prefill + 1 decode worker, disaggregated), identical except for the
decode worker's `--spec-tokens` (0 vs K), serve the same greedy requests on the trained checkpoint
(held-out code prompts). Reports decode tok/s per request (tokens after the first / time after the
first), whether the streamed tokens are identical, and the decode workers' acceptance. Writes
bench/results/serve_spec.json.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from baton.client import BatonClient
from engine.training.evaluate import held_out_prompts
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster

RESULTS = Path(__file__).parent / "results" / "serve_spec.json"


def serve_decode(model: str, spec_tokens: int, prompts: list[list[int]], max_tokens: int) -> dict:
    router = RouterConfig(model=model, listen="127.0.0.1:0", local_prefill_threshold=0)
    spec = ClusterSpec(model, router=router, worker_args=("--spec-tokens", str(spec_tokens)))
    speeds, outputs = [], []
    with LocalCluster(spec) as cluster:
        client = BatonClient(cluster.address)
        client.generate(token_ids=prompts[0], temperature=0.0, max_tokens=4, ignore_eos=True)  # warm up
        for i, prompt in enumerate(prompts):
            result = client.generate(
                session_id=f"s{i}", token_ids=prompt, temperature=0.0, max_tokens=max_tokens, ignore_eos=True
            )
            speeds.append((len(result.token_ids) - 1) / max(result.e2e_s - result.ttft_s, 1e-9))
            outputs.append(list(result.token_ids))
        client.close()
        decode = [w for w in cluster.router.core.list_workers().workers if w.role == "decode"]
    drafted = sum(w.load.spec_drafted for w in decode)
    accepted = sum(w.load.spec_accepted for w in decode)
    return {
        "spec_tokens": spec_tokens,
        "decode_tok_s_p50": statistics.median(speeds),
        "decode_tok_s": speeds,
        "spec_drafted": drafted,
        "spec_accepted": accepted,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "outputs": outputs,
    }


def run(model: str, spec_tokens: int, requests: int = 6, max_tokens: int = 64, out: Path = RESULTS) -> dict:
    prompts = held_out_prompts(model, requests, 32)
    plain = serve_decode(model, 0, prompts, max_tokens)
    spec = serve_decode(model, spec_tokens, prompts, max_tokens)
    result = {
        "model": model,
        "requests": requests,
        "max_tokens": max_tokens,
        "same_tokens": plain["outputs"] == spec["outputs"],
        "speedup_p50": spec["decode_tok_s_p50"] / plain["decode_tok_s_p50"],
        "plain": {k: v for k, v in plain.items() if k != "outputs"},
        "spec": {k: v for k, v in spec.items() if k != "outputs"},
    }
    print(
        f"\nserved decode, model {Path(model).name}, {requests} greedy requests x {max_tokens} tokens, disaggregated"
    )
    print(f"{'decode worker':<18}{'tok/s p50':>10}{'accepted':>10}")
    for row in (plain, spec):
        accept = f"{row['acceptance_rate']:.0%}" if row["spec_tokens"] else "-"
        print(f"{'--spec-tokens ' + str(row['spec_tokens']):<18}{row['decode_tok_s_p50']:>10.1f}{accept:>10}")
    print(
        f"speedup {result['speedup_p50']:.2f}x; same tokens with and without speculation: {result['same_tokens']}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result
