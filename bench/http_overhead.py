"""What the OpenAI HTTP face adds per request over gRPC, on one router and one pool.

The same short request (token ids, 1 output token, greedy, colocated prefill) alternates between
gRPC `Generate` and HTTP `POST /v1/completions` (non-streaming, a kept-alive connection), so both
see the same workers and the same load; the added latency is the median of the paired differences.
"""

from __future__ import annotations

import json
import random
import statistics
import time

from tqdm import tqdm


def http_overhead(model: str, requests_: int = 200, prompt_tokens: int = 64) -> dict:
    import requests

    from baton.client import BatonClient
    from engine.config import ModelConfig
    from router.config import RouterConfig
    from router.local_cluster import ClusterSpec, LocalCluster

    vocab = ModelConfig.from_json(f"{model}/config.json").vocab_size
    rng = random.Random(2)
    config = RouterConfig(model=model, listen="127.0.0.1:0", http_listen="127.0.0.1:0")
    timings: dict[str, list[float]] = {"grpc": [], "http": []}
    with LocalCluster(ClusterSpec(model, router=config)) as cluster:
        grpc_client = BatonClient(cluster.address)
        session = requests.Session()
        url = f"http://{cluster.router.http_address}/v1/completions"

        def over_http(prompt: list[int]) -> None:
            body = json.dumps({"prompt": prompt, "max_tokens": 1, "temperature": 0.0})
            response = session.post(url, data=body, headers={"content-type": "application/json"}, timeout=60)
            response.raise_for_status()

        def over_grpc(prompt: list[int]) -> None:
            grpc_client.generate(token_ids=prompt, max_tokens=1, temperature=0.0)

        for call in (over_http, over_grpc) * 5:  # warm-up
            call([rng.randrange(vocab) for _ in range(prompt_tokens)])
        for _ in tqdm(range(requests_), desc="HTTP vs gRPC", unit="pair"):
            prompt = [rng.randrange(vocab) for _ in range(prompt_tokens)]
            for name, call in (("grpc", over_grpc), ("http", over_http)):
                started = time.perf_counter()
                call(prompt)
                timings[name].append(time.perf_counter() - started)
        grpc_client.close()
    added = [h - g for h, g in zip(timings["http"], timings["grpc"], strict=True)]
    return {
        "requests": requests_,
        "prompt_tokens": prompt_tokens,
        "grpc_p50_ms": 1e3 * statistics.median(timings["grpc"]),
        "http_p50_ms": 1e3 * statistics.median(timings["http"]),
        "added_p50_ms": 1e3 * statistics.median(added),
    }
