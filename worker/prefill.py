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
"""

from __future__ import annotations

import logging
import queue
import time

from baton_pb.v1 import worker_pb2, worker_pb2_grpc
from rpc.convert import sampling_from_proto
from rpc.errors import grpc_errors
from rpc.logs import request_context
from worker.core import WorkerCore
from worker.descriptors import descriptor_from_proto
from worker.engine_loop import EngineStopped
from worker.prefill_sender import LayerwiseSender

log = logging.getLogger(__name__)
PREFILL_TIMEOUT_S = 600.0


class PrefillServicer(worker_pb2_grpc.PrefillServiceServicer):
    def __init__(self, core: WorkerCore) -> None:
        self.core = core

    def Prefill(self, request, context):
        req = request.request
        with request_context(req.request_id, req.session_id), grpc_errors(context), self.core.admit():
            req = request.request
            if not req.prompt_token_ids:
                raise ValueError("prompt is empty")
            params = sampling_from_proto(req.sampling)
            descriptor = descriptor_from_proto(request.destination)
            started = time.perf_counter()
            fetched_tokens, fetch_failed = 0, False
            if request.HasField("fetch") and request.fetch.blocks > 0:
                from worker.prefix_fetch import fetch_prefix

                fetched_tokens, fetch_failed = fetch_prefix(self.core, req, request.fetch)
            sender = LayerwiseSender(self.core, descriptor, req.request_id)
            prompt = list(req.prompt_token_ids)
            outputs = self.core.loop.add_request(
                req.request_id,
                prompt,
                params,
                prefill_only=True,
                cache_salt=req.cache_salt,
                layer_callback=sender.on_layer_done,
            )
            try:
                result, output = self._wait_prefill(req.request_id, outputs, context)
                transfer_bytes = sender.finish(result)
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
            return worker_pb2.PrefillResponse(
                first_token=result.first_token,
                prompt_tokens=len(prompt),
                cached_tokens=cached,
                fetched_tokens=fetched_tokens,
                computed_tokens=computed,
                transfer_bytes=transfer_bytes,
                prefill_seconds=time.perf_counter() - started,
                fetch_failed=fetch_failed,
            )

    def _wait_prefill(self, request_id: str, outputs: queue.Queue, context):
        deadline = time.monotonic() + PREFILL_TIMEOUT_S
        while time.monotonic() < deadline:
            if not context.is_active():
                raise TimeoutError(f"client of {request_id} went away")
            try:
                output = outputs.get(timeout=0.25)
            except queue.Empty:
                continue
            if isinstance(output, BaseException):
                raise EngineStopped(str(output)) from output
            if output.prefill is not None:
                return output.prefill, output
            if output.finished:
                raise RuntimeError(f"request {request_id} finished ({output.finish_reason}) without a prefill result")
        raise TimeoutError(f"prefill of {request_id} took over {PREFILL_TIMEOUT_S:.0f} s")


def add_to_server(core: WorkerCore, server) -> None:
    """What `worker.launch.start_worker` calls to register this role's service."""
    worker_pb2_grpc.add_PrefillServiceServicer_to_server(PrefillServicer(core), server)
