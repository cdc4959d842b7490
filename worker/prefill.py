"""The prefill worker: a gRPC server around one engine and one transfer backend.

Life of a request here:
1. `Prefill` (from the router) carries the prompt and the decode worker's transfer descriptor
   (and, optionally, a peer that holds a longer cached prefix: see `worker/prefix_fetch.py`).
2. The engine matches the prompt against its radix cache (a prefix ending at a DeltaNet state
   checkpoint), copies that checkpoint into the request's live slot and computes only the rest, in
   chunks. After each chunk, each layer's finished KV pages are posted to the decode worker while
   the next layers compute (`LayerwiseSender`).
3. When the last chunk is done the engine samples the first token; the sender posts the pages the
   decode side still lacks (cached ones), the final conv + recurrent state of every DeltaNet layer,
   the first token and the manifest.
4. The engine keeps the prompt in its radix cache with a checkpoint at its end (events go to the
   index), releases the request's pins, and `Prefill` answers with the first token and counts.
`PrefillStream` is the same with a progress message after every computed chunk and a heartbeat
(from this handler thread, not the engine's) whenever nothing else went out for `heartbeat_s`, so
the router can tell a long prefill from a stalled worker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator
from typing import TypeVar

from baton_pb.v1 import worker_pb2, worker_pb2_grpc
from rpc.convert import sampling_from_proto
from rpc.errors import grpc_errors
from rpc.logs import request_context
from worker.core import WorkerCore
from worker.engine_loop import EngineStopped
from worker.prefill_sender import LayerwiseSender
from worker.prefix_fetch import fetch_prefix

log = logging.getLogger(__name__)
PREFILL_TIMEOUT_S = 600.0
T = TypeVar("T")


class PrefillServicer(worker_pb2_grpc.PrefillServiceServicer):
    def __init__(self, core: WorkerCore) -> None:
        self.core = core

    def Prefill(self, request, context):
        for message in self.PrefillStream(request, context):
            if message.HasField("result"):
                return message.result
        return None  # aborted: grpc_errors has set the status

    def PrefillStream(self, request, context):
        """Progress after every chunk, heartbeats in between, and the result last."""
        req = request.request
        with request_context(req.request_id, req.session_id), grpc_errors(context), self.core.admit():
            req = request.request
            if not req.prompt_token_ids:
                raise ValueError("prompt is empty")
            params = sampling_from_proto(req.sampling)
            started = time.perf_counter()
            beat_s = self.core.config.heartbeat_s
            fetched_tokens, fetch_failed = 0, False
            if request.HasField("fetch") and request.fetch.blocks > 0:
                fetched_tokens, fetch_failed = yield from _with_heartbeats(
                    lambda: fetch_prefix(self.core, req, request.fetch), beat_s
                )
            sender = LayerwiseSender(self.core, request.destination, req.request_id)
            prompt = list(req.prompt_token_ids)
            progress = _Progress(self.core.engine.model_config.num_hidden_layers - 1, sender.on_layer_done)
            outputs = self.core.loop.add_request(
                req.request_id,
                prompt,
                params,
                prefill_only=True,
                cache_salt=req.cache_salt,
                layer_callback=progress.on_layer_done,
            )
            try:
                result, output = yield from self._wait_prefill(req.request_id, outputs, context, progress)
                transfer_bytes = yield from _with_heartbeats(lambda: sender.finish(result), beat_s)
            except BaseException as error:
                sender.abort(f"prefill failed: {error}")
                self.core.loop.call(lambda engine: engine.abort(req.request_id))
                raise
            finally:
                self.core.loop.close_stream(req.request_id)
            self.core.loop.call(lambda engine: engine.release(req.request_id))
            cached = int(getattr(output, "num_cached_tokens", 0) or 0)
            computed = len(prompt) - cached
            self.core.count("computed_tokens", computed)
            self.core.count("transfer_bytes", transfer_bytes)
            self.core.count("transfer_seconds", sender.seconds())
            response = worker_pb2.PrefillResponse(
                first_token=result.first_token,
                prompt_tokens=len(prompt),
                cached_tokens=cached,
                fetched_tokens=fetched_tokens,
                computed_tokens=computed,
                transfer_bytes=transfer_bytes,
                prefill_seconds=time.perf_counter() - started,
                fetch_failed=fetch_failed,
            )
            yield worker_pb2.PrefillProgress(computed_tokens=progress.tokens, result=response)

    def _wait_prefill(self, request_id: str, outputs: queue.Queue, context, progress: _Progress):
        """Yields a progress message per finished chunk (a heartbeat when none finished for
        `heartbeat_s`); returns (PrefillResult, RequestOutput)."""
        deadline = time.monotonic() + PREFILL_TIMEOUT_S
        beat_s = self.core.config.heartbeat_s
        reported, last_sent = 0, time.monotonic()
        while time.monotonic() < deadline:
            if not context.is_active():
                raise TimeoutError(f"client of {request_id} went away")
            try:
                output = outputs.get(timeout=min(0.25, beat_s))
            except queue.Empty:
                output = None
            if progress.tokens != reported:
                reported, last_sent = progress.tokens, time.monotonic()
                yield worker_pb2.PrefillProgress(computed_tokens=reported)
            elif time.monotonic() - last_sent >= beat_s:
                last_sent = time.monotonic()
                yield worker_pb2.PrefillProgress(computed_tokens=reported, heartbeat=True)
            if output is None:
                continue
            if isinstance(output, BaseException):
                raise EngineStopped(str(output)) from output
            if output.prefill is not None:
                return output.prefill, output
            if output.finished:
                raise RuntimeError(f"request {request_id} finished ({output.finish_reason}) without a prefill result")
        raise TimeoutError(f"prefill of {request_id} took over {PREFILL_TIMEOUT_S:.0f} s")


class _Progress:
    """Engine thread: after the last layer of a chunk, the prompt tokens done so far."""

    def __init__(self, last_layer: int, then: Callable[[int, int, int], None]) -> None:
        self.last_layer, self.then = last_layer, then
        self.tokens = 0

    def on_layer_done(self, layer: int, token_start: int, token_end: int) -> None:
        self.then(layer, token_start, token_end)
        if layer == self.last_layer:
            self.tokens = max(self.tokens, token_end)


def _with_heartbeats(fn: Callable[[], T], interval_s: float) -> Generator[worker_pb2.PrefillProgress, None, T]:
    """Runs fn on a helper thread, yielding a heartbeat every `interval_s` until it returns."""
    box: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = error
        finally:
            done.set()

    threading.Thread(target=run, name="prefill-blocking", daemon=True).start()
    while not done.wait(interval_s):
        yield worker_pb2.PrefillProgress(heartbeat=True)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def add_to_server(core: WorkerCore, server) -> None:
    """What `worker.launch.start_worker` calls to register this role's service."""
    worker_pb2_grpc.add_PrefillServiceServicer_to_server(PrefillServicer(core), server)
