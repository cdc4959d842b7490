"""Streaming one engine request's outputs to a gRPC client as TokenChunks.

While the engine has nothing new for the request (a long prefill, JIT compilation, graph capture)
the stream sends a heartbeat every `heartbeat_s`. The beat comes from this gRPC handler thread,
not from the engine thread, so it keeps beating while the engine computes; a stopped process
(SIGSTOP, a hung host) stops beating, and the router fails over after its stall timeout."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc

from baton_pb.v1 import worker_pb2
from rpc.convert import logprobs_to_proto
from worker.core import WorkerCore
from worker.engine_loop import EngineStopped

OUTPUT_POLL_S = 0.25  # how often the client's liveness is checked
STALL_LIMIT_S = 600.0


def stream_tokens(
    core: WorkerCore, request_id: str, outputs: queue.Queue, context: grpc.ServicerContext
) -> Iterator[worker_pb2.TokenChunk]:
    """Yields the request's new tokens until it finishes; aborts it if the client goes away."""
    waited = silent = 0.0
    finished = False
    poll_s = min(OUTPUT_POLL_S, core.config.heartbeat_s)
    try:
        while not finished:
            if not context.is_active():
                return
            try:
                output = outputs.get(timeout=poll_s)
            except queue.Empty:
                waited += poll_s
                silent += poll_s
                if waited > STALL_LIMIT_S:
                    raise TimeoutError(f"request {request_id} produced nothing for {STALL_LIMIT_S:.0f} s") from None
                if silent >= core.config.heartbeat_s:
                    silent = 0.0
                    yield worker_pb2.TokenChunk(heartbeat=True)
                continue
            waited = 0.0
            if isinstance(output, BaseException):
                raise EngineStopped(str(output)) from output
            finished = bool(output.finished)
            chunk = worker_pb2.TokenChunk(
                token_ids=list(output.new_token_ids),
                finish_reason=(output.finish_reason or "") if finished else "",
                logprobs=logprobs_to_proto(getattr(output, "logprobs", None)),
            )
            if finished:
                chunk.prompt_tokens = int(getattr(output, "num_prompt_tokens", 0) or 0)
                chunk.cached_tokens = int(getattr(output, "num_cached_tokens", 0) or 0)
            if chunk.token_ids or finished:
                silent = 0.0
                yield chunk
    finally:
        core.loop.close_stream(request_id)
        if not finished:
            core.loop.call(lambda engine: engine.abort(request_id))
