"""Small-request latency while a huge prompt tokenizes (a section of `python -m bench.serve`).

One router + 1 prefill + 1 decode worker. A small request (a few tokens, 2 output tokens) is timed
alone, then back to back while a huge text prompt (default 7.5 MB) is being tokenized by the router,
with the tokenizer's GIL-releasing path (as shipped) and, for comparison, with `tokenizers`' plain
`encode`, which holds the GIL (what the router did before). The huge prompt is longer than the
model's context, so it is refused after tokenization; only its tokenization matters here.
"""

from __future__ import annotations

import statistics
import threading
import time

import grpc

from baton.client import BatonClient, build_request
from baton_pb.v1 import public_pb2_grpc
from engine import tokenizer as tokenizer_module


def _small_latencies(client: BatonClient, count: int, while_alive: threading.Thread | None = None) -> list[float]:
    latencies = []
    for _ in range(count):
        if while_alive is not None and not while_alive.is_alive():
            break
        started = time.perf_counter()
        client.generate(token_ids=[5, 6, 7, 8], temperature=0.0, max_tokens=2)
        latencies.append(time.perf_counter() - started)
    return latencies


def _during_huge(cluster, client: BatonClient, huge_text: str, count: int) -> dict:
    request = build_request("", huge_text, None, None, "", "", False, {"max_tokens": 2})
    stub = public_pb2_grpc.BatonStub(client.channel)
    outcome: dict = {}

    def send() -> None:
        started = time.perf_counter()
        try:
            list(stub.Generate(request, timeout=600))
            outcome["status"] = "OK"
        except grpc.RpcError as error:
            outcome["status"] = error.code().name
        outcome["huge_s"] = time.perf_counter() - started

    pool = cluster.router.core.tokenize_pool
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    while pool.active == 0 and thread.is_alive():
        time.sleep(0.002)
    latencies = _small_latencies(client, count, while_alive=thread)
    thread.join()
    return {
        "small_p50_ms": 1e3 * statistics.median(latencies) if latencies else None,
        "small_max_ms": 1e3 * max(latencies) if latencies else None,
        "small_completed": len(latencies),
        "huge_request_s": outcome.get("huge_s"),
        "huge_status": outcome.get("status"),
    }


def tokenize_stall(model: str, huge_mb: float = 7.5, count: int = 20) -> dict:
    from router.config import RouterConfig
    from router.local_cluster import ClusterSpec, LocalCluster

    huge_text = "lorem ipsum dolor sit amet, " * int(huge_mb * (1 << 20) / 28)
    config = RouterConfig(model=model, listen="127.0.0.1:0", max_prompt_bytes=len(huge_text) + 1024)
    with LocalCluster(ClusterSpec(model, router=config)) as cluster:
        client = BatonClient(cluster.address)
        _small_latencies(client, 3)  # warm up
        alone = _small_latencies(client, count)
        released = _during_huge(cluster, client, huge_text, count)
        saved = tokenizer_module.GIL_FREE_ENCODE_CHARS
        tokenizer_module.GIL_FREE_ENCODE_CHARS = 10**12  # plain `encode`: holds the GIL
        try:
            held = _during_huge(cluster, client, huge_text, count)
        finally:
            tokenizer_module.GIL_FREE_ENCODE_CHARS = saved
        client.close()
    return {
        "huge_prompt_mb": huge_mb,
        "small_alone_p50_ms": 1e3 * statistics.median(alone),
        "during_huge_gil_released": released,
        "during_huge_gil_held": held,
    }


def print_table(result: dict) -> None:
    print(f"\nsmall-request latency while a {result['huge_prompt_mb']} MB prompt tokenizes")
    print(f"{'case':<34}{'p50 ms':>10}{'max ms':>10}{'done':>6}{'huge s':>9}")
    print(f"{'alone':<34}{result['small_alone_p50_ms']:>10.1f}{'':>10}{'':>6}{'':>9}")
    for name, key in (("during huge, GIL released (ours)", "during_huge_gil_released"),
                      ("during huge, GIL held (encode)", "during_huge_gil_held")):  # fmt: skip
        row = result[key]
        p50 = f"{row['small_p50_ms']:.1f}" if row["small_p50_ms"] is not None else "-"
        worst = f"{row['small_max_ms']:.1f}" if row["small_max_ms"] is not None else "-"
        print(f"{name:<34}{p50:>10}{worst:>10}{row['small_completed']:>6}{row['huge_request_s']:>9.1f}")
