"""What the OpenAI HTTP face adds per request over gRPC, on one router and one pool.

The same short request (token ids, 1 output token, greedy, colocated prefill) alternates between
gRPC `Generate` and HTTP `POST /v1/completions` (non-streaming, a kept-alive connection), so both
see the same workers and the same load; the added latency is the median of the paired differences.
A second series times the first streamed token: gRPC's first message vs HTTP's first SSE event.
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
    from engine.model_config import ModelConfig
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

        def first_sse(prompt: list[int]) -> float:
            body = json.dumps({"prompt": prompt, "max_tokens": 4, "temperature": 0.0, "stream": True})
            started = time.perf_counter()
            with session.post(url, data=body, headers={"content-type": "application/json"}, stream=True, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith(b"data: "):
                        first = time.perf_counter() - started
                        break
                for _ in r.iter_lines():
                    pass
            return first

        def first_grpc(prompt: list[int]) -> float:
            return grpc_client.generate(token_ids=prompt, max_tokens=4, temperature=0.0).ttft_s

        for call in (over_http, over_grpc) * 5:  # warm-up
            call([rng.randrange(vocab) for _ in range(prompt_tokens)])
        for i in tqdm(range(requests_), desc="HTTP vs gRPC", unit="pair"):
            prompt = [rng.randrange(vocab) for _ in range(prompt_tokens)]
            pair = (("grpc", over_grpc), ("http", over_http))
            for name, call in pair if i % 2 else pair[::-1]:  # alternate who goes first
                started = time.perf_counter()
                call(prompt)
                timings[name].append(time.perf_counter() - started)
        for i in tqdm(range(requests_), desc="first token, HTTP SSE vs gRPC", unit="pair"):
            prompt = [rng.randrange(vocab) for _ in range(prompt_tokens)]
            pair = (("grpc_ttft", first_grpc), ("http_ttft", first_sse))
            for name, call in pair if i % 2 else pair[::-1]:
                timings.setdefault(name, []).append(call(prompt))
        grpc_client.close()
    added = [h - g for h, g in zip(timings["http"], timings["grpc"], strict=True)]
    added_ttft = [h - g for h, g in zip(timings["http_ttft"], timings["grpc_ttft"], strict=True)]
    return {
        "grpc_ttft_p50_ms": 1e3 * statistics.median(timings["grpc_ttft"]),
        "http_ttft_p50_ms": 1e3 * statistics.median(timings["http_ttft"]),
        "added_ttft_p50_ms": 1e3 * statistics.median(added_ttft),
        "requests": requests_,
        "prompt_tokens": prompt_tokens,
        "grpc_p50_ms": 1e3 * statistics.median(timings["grpc"]),
        "http_p50_ms": 1e3 * statistics.median(timings["http"]),
        "added_p50_ms": 1e3 * statistics.median(added),
    }


class InstantCore:
    """A router core that answers at once (one token, then finish + usage): what remains is the
    cost of each face itself — parsing, auth, the thread bridge, serialization, the transport."""

    def __init__(self, model: str) -> None:
        from router.config import RouterConfig

        self.config = RouterConfig(model=model)
        self.model_id = "instant"
        self.max_context = 4096

    def generate(self, request, tenant: str):
        from baton_pb.v1 import common_pb2, public_pb2

        yield public_pb2.GenerateResponse(request_id=request.request_id, token_ids=[7], text="x")
        usage = common_pb2.Usage(prompt_tokens=len(request.token_ids.ids), completion_tokens=1)
        yield public_pb2.GenerateResponse(request_id=request.request_id, finish_reason="length", usage=usage)

    def abort(self, request_id: str) -> bool:
        return True


def face_overhead(model: str, requests_: int = 2000, prompt_tokens: int = 64) -> dict:
    """Both faces in front of `InstantCore`, in one process: per-request latency of each, alternating."""
    from concurrent import futures

    import grpc
    import requests

    from baton.client import BatonClient
    from baton_pb.v1 import common_pb2, public_pb2, public_pb2_grpc
    from router.openai.server import start_http
    from router.service import BatonServicer
    from rpc.auth import TokenAuth

    core = InstantCore(model)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    public_pb2_grpc.add_BatonServicer_to_server(BatonServicer(core, TokenAuth({})), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    http = start_http(core, TokenAuth({}), "127.0.0.1:0", 1 << 20)
    grpc_client, session = BatonClient(f"127.0.0.1:{port}"), requests.Session()
    url = f"http://{http.address}/v1/completions"
    prompt = list(range(prompt_tokens))
    body = json.dumps({"prompt": prompt, "max_tokens": 1})
    stream_body = json.dumps({"prompt": prompt, "max_tokens": 1, "stream": True})
    request = public_pb2.GenerateRequest(token_ids=common_pb2.TokenIds(ids=prompt))

    def first_grpc_message() -> float:
        started = time.perf_counter()
        responses = grpc_client.stub.Generate(request)
        next(responses)
        first = time.perf_counter() - started
        list(responses)
        return first

    def first_sse_event() -> float:
        started = time.perf_counter()
        with session.post(url, data=stream_body, headers={"content-type": "application/json"}, stream=True) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith(b"data: ")) and time.perf_counter() - started
            list(lines)
        return first

    def timed(call) -> float:
        started = time.perf_counter()
        call()
        return time.perf_counter() - started

    calls = {
        "grpc": lambda: timed(lambda: grpc_client.generate(token_ids=prompt, max_tokens=1)),
        "http": lambda: timed(lambda: session.post(url, data=body, headers={"content-type": "application/json"}).raise_for_status()),
        "grpc_first": first_grpc_message,
        "http_first": first_sse_event,
    }  # fmt: skip
    timings: dict[str, list[float]] = {name: [] for name in calls}
    try:
        for i in range(requests_ + 50):
            for group in (("grpc", "http"), ("grpc_first", "http_first")):
                for name in group if i % 2 else group[::-1]:  # alternate who goes first
                    value = calls[name]()
                    if i >= 50:  # after a warm-up
                        timings[name].append(value)
    finally:
        grpc_client.close()
        http.stop()
        server.stop(0)
    p50 = {name: 1e3 * statistics.median(values) for name, values in timings.items()}
    return {"requests": requests_, "grpc_p50_ms": p50["grpc"], "http_p50_ms": p50["http"],
            "added_p50_ms": p50["http"] - p50["grpc"], "grpc_first_p50_ms": p50["grpc_first"],
            "http_first_p50_ms": p50["http_first"], "added_first_p50_ms": p50["http_first"] - p50["grpc_first"]}  # fmt: skip
