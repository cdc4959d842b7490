"""What sharded KV transfer costs, served: prefill and decode workers of TP degrees (1|2) -> (1|2)
behind the real router, every prompt prefilled by the prefill worker and shipped rank to rank
(worker/shard_transfer.py), resharded on arrival when the degrees differ (worker/reshard.py).

    python -m bench.transfer_tp [--model DIR] [--prompt-tokens 1024] [--requests 6]
                                [--shapes 1-1,2-2,1-2,2-1] [--out bench/results/transfer_tp.json]

Per shape: time to first token (p50, the prefill and its transfer; one output token), KV + state
bytes sent per request (the router's transfer counter, every rank's sub-transfers summed), and
whether the first tokens equal those of the first shape. A decode rank of another degree receives each
source rank's whole units (it stages them, then keeps its heads), so split and merge send more
bytes than the plain shapes: the table shows how many.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from baton.client import BatonClient
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from tests.helpers.checkpoints import small_checkpoint


def run_shape(model: str, prefill_tp: int, decode_tp: int, prompts: list[list[int]]) -> dict:
    router = RouterConfig(model="", listen="127.0.0.1:0", local_prefill_threshold=0)
    spec = ClusterSpec(
        model, prefill=1, decode=1, router=router,
        prefill_args=("--tp", str(prefill_tp)), decode_args=("--tp", str(decode_tp)),
    )  # fmt: skip
    with LocalCluster(spec) as cluster:
        client = BatonClient(cluster.address)
        client.generate(session_id="warm", token_ids=prompts[0][:64], temperature=0.0, max_tokens=1)
        counter = cluster.router.core.metrics.transfer_bytes
        before = counter._value.get()
        seconds, first = [], []
        for n, prompt in enumerate(prompts):
            started = time.perf_counter()
            result = client.generate(session_id=f"s{n}", token_ids=prompt, temperature=0.0, max_tokens=1)
            seconds.append(time.perf_counter() - started)
            first.append(result.token_ids[0])
            if not result.prefill_worker:
                raise RuntimeError("a prompt was not prefilled by the prefill worker")
        sent = counter._value.get() - before
        client.close()
    return {
        "prefill_tp": prefill_tp,
        "decode_tp": decode_tp,
        "ttft_p50_ms": 1e3 * statistics.median(seconds),
        "bytes_per_request": sent / len(prompts),
        "first_tokens": first,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint dir (default: the small preset)")
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--shapes", default="1-1,2-2,1-2,2-1", help="prefill tp - decode tp, comma separated")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = args.model or str(small_checkpoint("qwen3_next"))
    prompts = [[(97 * n + 13 * j) % 1000 + 3 for j in range(args.prompt_tokens)] for n in range(args.requests)]
    shapes = [tuple(int(x) for x in shape.split("-")) for shape in args.shapes.split(",")]
    rows = [run_shape(model, p, d, prompts) for p, d in shapes]
    base = rows[0]
    print(f"model {Path(model).name}  {args.prompt_tokens}-token prompts  {args.requests} requests per shape")
    print("prefill tp -> decode tp   TTFT p50 ms   MB sent/request   x bytes of first   same first tokens")
    for row in rows:
        row["bytes_vs_plain"] = row["bytes_per_request"] / base["bytes_per_request"]
        row["same_tokens"] = row["first_tokens"] == base["first_tokens"]
        print(f"{row['prefill_tp']:>10} -> {row['decode_tp']:<10} {row['ttft_p50_ms']:>11.1f} "
              f"{row['bytes_per_request'] / 1e6:>17.2f} {row['bytes_vs_plain']:>17.2f} {row['same_tokens']!s:>22}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"model": model, "prompt_tokens": args.prompt_tokens, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
