"""One Generate call, from routed to finished, with failover.

The path: route (index lookup + policy) → either the decode worker prefills locally and streams
(`DecodeService.Generate`), or the decode worker reserves pages + a state slot, the prefill worker
computes the prompt and writes KV + state + first token into them, and the decode worker streams
the rest. If a worker dies mid-request, the session is re-prefilled elsewhere with the prompt plus
the tokens already streamed, so the client sees no token lost or repeated.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from baton_pb.v1 import common_pb2, public_pb2, worker_pb2
from engine.tokenizer import IncrementalDecoder
from router.prompts import PreparedRequest
from router.registry import WorkerHandle
from serving.errors import ServiceUnavailable

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 4
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
}


class NoWorkers(ServiceUnavailable):
    pass


@dataclass
class FlowState:
    """What the client has been sent so far; the basis of failover."""

    emitted: list[int] = field(default_factory=list)
    cached_tokens: int = 0
    fetched_tokens: int = 0
    finish_reason: str = ""
    attempts: int = 0
    ttft_s: float | None = None
    route: public_pb2.RouteInfo | None = None
    current: list[tuple[WorkerHandle, str]] = field(default_factory=list)  # (worker, worker request id)
    aborted: bool = False


class GenerateFlow:
    def __init__(self, router, prepared: PreparedRequest, explain: bool) -> None:
        self.router = router
        self.prepared = prepared
        self.explain = explain
        self.state = FlowState()
        self.decoder = IncrementalDecoder(router.tokenizer)
        self.started = time.perf_counter()

    def run(self) -> Iterator[public_pb2.GenerateResponse]:
        params = self.prepared.params
        while not self.state.finish_reason:
            remaining = params.max_tokens - len(self.state.emitted)
            if remaining <= 0:
                self.state.finish_reason = "length"
                break
            self.state.attempts += 1
            try:
                yield from self._attempt(remaining)
            except grpc.RpcError as error:
                if self.state.aborted:
                    self.state.finish_reason = "abort"
                    break
                if error.code() not in RETRYABLE or self.state.attempts >= MAX_ATTEMPTS:
                    raise
                log.warning(
                    "request %s attempt %d failed (%s: %s); retrying elsewhere",
                    self.prepared.request_id, self.state.attempts, error.code().name, error.details(),
                )
                self.router.metrics.count("failovers")
        yield self._final_response()

    def abort(self) -> None:
        self.state.aborted = True
        for handle, worker_request_id in list(self.state.current):
            try:
                handle.control.Abort(worker_pb2.WorkerAbortRequest(request_id=worker_request_id), timeout=5)
            except grpc.RpcError:
                pass

    # ---- one attempt -------------------------------------------------------------------------------
    def _attempt(self, remaining: int) -> Iterator[public_pb2.GenerateResponse]:
        prompt = self.prepared.prompt + self.state.emitted
        decision = self.router.route(self.prepared, prompt)
        worker_request_id = self.prepared.request_id if self.state.attempts == 1 else f"{self.prepared.request_id}.r{self.state.attempts}"
        request = self._worker_request(worker_request_id, prompt, remaining)
        decode = decision.decode
        if self.state.route is None:
            self.state.route = decision.route_info(self.explain)
            yield public_pb2.GenerateResponse(request_id=self.prepared.request_id, route=self.state.route)
        if decision.prefill is None:
            self.state.current = [(decode, worker_request_id)]
            chunks = decode.decode.Generate(worker_pb2.WorkerGenerateRequest(request=request), timeout=self.router.config.rpc_timeout_s)
            yield from self._relay(decode, chunks)
            self.router.sessions.record(self.prepared.session_id, decode.worker_id, "")
            return
        yield from self._disaggregated(decision, request, worker_request_id)

    def _disaggregated(self, decision, request: worker_pb2.WorkerRequest, worker_request_id: str):
        decode, prefill = decision.decode, decision.prefill
        config = self.router.config
        self.state.current = [(decode, worker_request_id), (prefill, worker_request_id)]
        reserved = decode.decode.Reserve(
            worker_pb2.ReserveRequest(request=request, transfer_id=f"{worker_request_id}-{uuid.uuid4().hex[:6]}", deadline_s=config.transfer_deadline_s),
            timeout=30,
        )
        try:
            prefilled = prefill.prefill.Prefill(
                worker_pb2.PrefillRequest(request=request, destination=reserved.descriptor, fetch=decision.fetch),
                timeout=config.rpc_timeout_s,
            )
        except grpc.RpcError as error:
            self._cancel_reservation(decode, worker_request_id)
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                self.router.registry.mark_down(prefill)
            raise
        if self.state.attempts == 1 or not self.state.cached_tokens:
            self.state.cached_tokens = prefilled.cached_tokens + prefilled.fetched_tokens
            self.state.fetched_tokens = prefilled.fetched_tokens
        self.router.metrics.observe_transfer(prefilled.transfer_bytes)
        first = [prefilled.first_token]
        yield self._tokens_response(first)
        self.state.current = [(decode, worker_request_id)]
        chunks = decode.decode.Decode(
            worker_pb2.DecodeRequest(request_id=worker_request_id, transfer_deadline_s=config.transfer_deadline_s),
            timeout=config.rpc_timeout_s,
        )
        yield from self._relay(decode, chunks, already_sent=1)
        self.router.sessions.record(self.prepared.session_id, decode.worker_id, prefill.worker_id)

    def _relay(self, decode: WorkerHandle, chunks, already_sent: int = 0) -> Iterator[public_pb2.GenerateResponse]:
        """Forwards a worker's TokenChunks; if the stream breaks, the caller fails over."""
        try:
            for chunk in chunks:
                tokens = list(chunk.token_ids)
                if tokens:
                    yield self._tokens_response(tokens)
                if chunk.finish_reason:
                    self.state.finish_reason = chunk.finish_reason
                    if chunk.cached_tokens and not self.state.cached_tokens:
                        self.state.cached_tokens = chunk.cached_tokens
                    return
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
                self.router.registry.mark_down(decode)
            raise
        if not self.state.finish_reason:
            raise _stream_ended_early()

    def _tokens_response(self, tokens: list[int]) -> public_pb2.GenerateResponse:
        if self.state.ttft_s is None:
            self.state.ttft_s = time.perf_counter() - self.started
            self.router.metrics.observe_ttft(self.state.ttft_s)
        self.state.emitted.extend(tokens)
        text = self.decoder.add(tokens)
        return public_pb2.GenerateResponse(request_id=self.prepared.request_id, token_ids=tokens, text=text)

    def _final_response(self) -> public_pb2.GenerateResponse:
        usage = common_pb2.Usage(
            prompt_tokens=len(self.prepared.prompt),
            completion_tokens=len(self.state.emitted),
            cached_tokens=self.state.cached_tokens,
            fetched_tokens=self.state.fetched_tokens,
        )
        return public_pb2.GenerateResponse(
            request_id=self.prepared.request_id, finish_reason=self.state.finish_reason, usage=usage
        )

    def _worker_request(self, worker_request_id: str, prompt: list[int], remaining: int) -> worker_pb2.WorkerRequest:
        sampling = self.router.sampling_proto(self.prepared.params, max_tokens=remaining)
        return worker_pb2.WorkerRequest(
            request_id=worker_request_id,
            session_id=self.prepared.session_id,
            prompt_token_ids=prompt,
            sampling=sampling,
            cache_salt=self.prepared.tenant,
        )

    def _cancel_reservation(self, decode: WorkerHandle, worker_request_id: str) -> None:
        try:
            decode.decode.CancelReservation(worker_pb2.CancelReservationRequest(request_id=worker_request_id), timeout=5)
        except grpc.RpcError:
            pass


class _StreamEndedEarly(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the worker's stream ended without a finish reason"


def _stream_ended_early() -> grpc.RpcError:
    return _StreamEndedEarly()
