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

STALL_LIMIT_S = 600.0


def stream_tokens(
    core: WorkerCore, request_id: str, outputs: queue.Queue, context: grpc.ServicerContext
) -> Iterator[worker_pb2.TokenChunk]:
    """Yields the request's new tokens until it finishes; aborts it if the client goes away."""
    waited = 0.0
    finished = False
    beat_s = core.config.heartbeat_s
    try:
        while not finished:
            if not context.is_active():
                return
            try:
                output = outputs.get(timeout=beat_s)
            except queue.Empty:
                waited += beat_s
                if waited > STALL_LIMIT_S:
                    raise TimeoutError(f"request {request_id} produced nothing for {STALL_LIMIT_S:.0f} s") from None
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
                yield chunk
    finally:
        core.loop.close_stream(request_id)
        if not finished:
            core.loop.call(lambda engine: engine.abort(request_id))
