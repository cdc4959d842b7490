"""One Generate call, from routed to finished, with failover.

The path: route (index lookup + policy) → either the decode worker prefills locally and streams
(`DecodeService.Generate`), or the decode worker reserves pages + a state slot, the prefill worker
computes the prompt and writes KV + state + first token into them, and the decode worker streams
the rest. If a worker dies mid-request, the session is re-prefilled elsewhere with the prompt plus
the tokens already streamed, so the client sees no token lost or repeated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from baton_pb.v1 import common_pb2, public_pb2, worker_pb2
from engine.tokenizer import IncrementalDecoder
from router.prompts import PreparedRequest
from router.registry import WorkerHandle
from router.stall_watch import StallWatch, WorkerStalled
from rpc.convert import sampling_to_proto
from rpc.errors import AdmissionRejected, ServiceUnavailable, is_draining_refusal, retry_after_ms

log = logging.getLogger(__name__)
# Every attempt re-routes the session (prompt + tokens already streamed), so a retry is idempotent
# from the client's side; the waits between attempts grow so a dying cluster is not hammered.
# The retry budget is a number of attempts, not wall time: a stalled peer costs one attempt
# (bounded by the stall timeout), never the budget of the attempts after it.
MAX_ATTEMPTS = 6
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0
CONTROL_TIMEOUT_S = 10.0  # CancelReservation, Abort: short control calls
# A call failing with one of these may mean the worker is gone (the registry probes it).
SUSPICIOUS = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
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
    last_token_at: float = 0.0
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
        self._attempt_route: public_pb2.RouteInfo | None = None
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
            except (grpc.RpcError, NoWorkers) as error:
                if self.state.aborted:
                    self.state.finish_reason = "abort"
                    break
                code = _code(error)
                if code not in RETRYABLE or self.state.attempts >= MAX_ATTEMPTS:
                    raise _final_error(error, self.state.attempts) from error
                log.warning(
                    "request %s attempt %d failed (%s: %s); retrying elsewhere",
                    self.prepared.request_id, self.state.attempts, code.name, _details(error),
                )  # fmt: skip
                self.router.metrics.count("failovers")
                self._backoff(error)
        yield self._final_response()

    def _backoff(self, error: BaseException) -> None:
        wait = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (self.state.attempts - 1))
        if _code(error) == grpc.StatusCode.RESOURCE_EXHAUSTED and isinstance(error, grpc.RpcError):
            wait = min(MAX_BACKOFF_S, max(wait, retry_after_ms(error) / 1000))
        time.sleep(wait * random.uniform(0.5, 1.0))  # jitter: retries of many flows do not align

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
        worker_request_id = (
            self.prepared.worker_request_id
            if self.state.attempts == 1
            else f"{self.prepared.worker_request_id}.r{self.state.attempts}"
        )
        request = self._worker_request(worker_request_id, prompt, remaining)
        reserved = None
        if decision.prefill is None and decision.verify_with is not None:
            decision, reserved = self._check_claim(decision, request, worker_request_id, len(prompt))
        decode = decision.decode
        # The client is told the route of the attempt that produces its first token (with it), not
        # that of an attempt a worker refused (draining, full) before generating anything.
        self._attempt_route = decision.route_info(self.explain)
        if decision.prefill is None:
            self.state.current = [(decode, worker_request_id)]
            with self._blame(decode):
                chunks = decode.decode.Generate(
                    worker_pb2.WorkerGenerateRequest(request=request),
                    timeout=self.router.config.rpc_timeout_s,
                )
                yield from self._relay(StallWatch(chunks, self.router.config.stall_timeout_s), computing=True)
            self.router.sessions.record(self.prepared.session_key, decode.worker_id, "")
            self._record_finish(decode, len(prompt), local=True)
            return
        yield from self._disaggregated(decision, request, worker_request_id, reserved)

    def _check_claim(self, decision, request: worker_pb2.WorkerRequest, worker_request_id: str, prompt_tokens: int):
        """Local prefill chosen on the index's word that the decode worker holds the prefix: its
        reservation says what it really holds. A true claim keeps the local route (the reservation is
        given back); a false one (a forged or stale index entry, or the router's own claim from a
        finished turn that the worker no longer holds: router/finished_prefixes.py, forgotten here)
        turns the route disaggregated on `verify_with`, reusing the reservation, so the missing part is
        prefilled by a prefill worker."""
        decode, threshold = decision.decode, self.router.config.local_prefill_threshold
        reserved = self._reserve(decode, request, worker_request_id, decision.verify_with)
        held = reserved.cached_blocks * self.router.config.block_size
        if prompt_tokens - held < threshold:
            self._cancel_reservation(decode, worker_request_id)
            return decision, None
        self.router.metrics.count("index_claim_refuted")
        self.router.finished.forget(self.prepared.session_key, decode.worker_id)
        log.warning(
            "request %s: the index claimed %d cached tokens on %s, its reservation holds %d; prefilling on %s",
            self.prepared.request_id, decision.cached_tokens, decode.worker_id, held, decision.verify_with.worker_id,
        )  # fmt: skip
        reason = (
            f"disaggregated: the index claimed {decision.cached_tokens} cached tokens at the decode worker, "
            f"its reservation holds {held}: {prompt_tokens - held} uncached tokens"
        )
        adapted = dataclasses.replace(
            decision, prefill=decision.verify_with, fetch=None, cached_tokens=0, reason=reason, verify_with=None
        )
        return adapted, reserved

    def _reserve(self, decode: WorkerHandle, request: worker_pb2.WorkerRequest, worker_request_id: str, sender):
        """Pages and state on the decode worker for a transfer from `sender` (a prefill worker; its
        tp tells the decode worker whether to reshard heads on arrival)."""
        transfer_id = f"{worker_request_id}-{uuid.uuid4().hex[:6]}"
        with self._blame(decode):
            return decode.decode.Reserve(
                worker_pb2.ReserveRequest(
                    request=request, transfer_id=transfer_id, deadline_s=self.router.config.transfer_deadline_s,
                    source_tp=sender.tp if sender is not None else 1,
                ),  # fmt: skip
                timeout=self._control_timeout_s(),
            )

    def _disaggregated(self, decision, request: worker_pb2.WorkerRequest, worker_request_id: str, reserved=None):
        decode, prefill = decision.decode, decision.prefill
        config = self.router.config
        self.state.current = [(decode, worker_request_id), (prefill, worker_request_id)]
        if reserved is None:
            reserved = self._reserve(decode, request, worker_request_id, prefill)
        decoding = False
        try:
            with self._blame(prefill):
                prefilled = self._prefill(prefill, request, reserved.descriptor, decision.fetch)
            # usage.cached_tokens: prompt tokens the computing (prefill) worker did not compute, from
            # its cache or fetched from a peer. The blocks the decode worker already held only saved
            # transfer, not compute (the prefill worker computed them anyway): a metric of their own.
            if self.state.attempts == 1 or not self.state.cached_tokens:
                self.state.cached_tokens = prefilled.cached_tokens
                self.state.fetched_tokens = prefilled.fetched_tokens
            self.router.metrics.observe_transfer(prefilled.transfer_bytes)
            self.router.metrics.observe_transfer_saved(reserved.cached_blocks * config.block_size)
            yield self._tokens_response([prefilled.first_token])
            self.state.current = [(decode, worker_request_id)]
            with self._blame(decode):
                chunks = decode.decode.Decode(
                    worker_pb2.DecodeRequest(
                        request_id=worker_request_id, transfer_deadline_s=config.transfer_deadline_s
                    ),
                    timeout=config.rpc_timeout_s,
                )
                decoding = True
                yield from self._relay(StallWatch(chunks, config.stall_timeout_s), computing=False)
        finally:
            if not decoding:  # failed, or the client left before Decode: free the pages now
                self._cancel_reservation(decode, worker_request_id)
        self.router.sessions.record(self.prepared.session_key, decode.worker_id, prefill.worker_id)
        self._record_finish(decode, len(request.prompt_token_ids), local=False)

    def _record_finish(self, decode: WorkerHandle, attempt_prompt: int, local: bool) -> None:
        """The decode worker cached prompt + output on finish; the router claims it at once, so the
        session's next turn does not wait on the worker's KV events (router/finished_prefixes.py)."""
        if self.state.finish_reason in ("stop", "length"):
            sequence = self.prepared.prompt + self.state.emitted
            self.router.record_finish(self.prepared, decode, sequence, attempt_prompt, local)

    def _prefill(self, prefill: WorkerHandle, request, descriptor, fetch) -> worker_pb2.PrefillResponse:
        """PrefillStream, watched: silence or no computed chunk for too long fails the attempt."""
        config = self.router.config
        call = prefill.prefill.PrefillStream(
            worker_pb2.PrefillRequest(request=request, destination=descriptor, fetch=fetch),
            timeout=config.transfer_deadline_s,  # the reservation waits no longer for the transfer
        )
        watch = StallWatch(
            call,
            config.stall_timeout_s,
            progress_deadline_s=config.prefill_progress_deadline_s,
            is_progress=lambda message: not message.heartbeat,
        )
        for message in watch:
            if message.HasField("result"):
                call.cancel()  # nothing follows the result; free the stream now
                return message.result
        raise _stream_ended_early()

    def _control_timeout_s(self) -> float:
        """A control call to a stalled worker should not outlast the stall timeout by much."""
        return max(2 * self.router.config.stall_timeout_s, 1.0)

    def _relay(self, chunks, computing: bool) -> Iterator[public_pb2.GenerateResponse]:
        """Forwards a worker's TokenChunks; if the stream breaks, the caller fails over. If the
        client goes away first, the worker call is cancelled, which aborts the worker's request.
        `computing`: this worker prefilled the prompt, so its cached count is the usage's."""
        try:
            for chunk in chunks:
                tokens = list(chunk.token_ids)
                if tokens:
                    yield self._tokens_response(tokens, chunk.logprobs)
                if chunk.finish_reason:
                    self.state.finish_reason = chunk.finish_reason
                    if computing and chunk.cached_tokens and not self.state.cached_tokens:
                        self.state.cached_tokens = chunk.cached_tokens
                    return
        finally:
            if not self.state.finish_reason:
                chunks.cancel()
        raise _stream_ended_early()

    @contextlib.contextmanager
    def _blame(self, handle: WorkerHandle) -> Iterator[None]:
        """A call to `handle` failed as if the worker were gone: the registry probes it and stops
        routing there if it does not answer."""
        try:
            yield
        except grpc.RpcError as error:
            if is_draining_refusal(error):
                handle.draining = True  # now, not at the registry's next poll
            elif isinstance(error, WorkerStalled) and not self.state.aborted:
                log.warning("worker %s stalled: %s", handle.worker_id, error.details())
                self.router.metrics.count("stalls")
                self.router.registry.mark_down(handle, verify=False)  # it would not answer a probe
            elif error.code() in SUSPICIOUS and not self.state.aborted:
                self.router.registry.mark_down(handle, timeout_s=self._control_timeout_s())
            raise

    def _tokens_response(self, tokens: list[int], logprobs=()) -> public_pb2.GenerateResponse:
        now = time.perf_counter()
        if self.state.ttft_s is None:
            self.state.ttft_s = now - self.started
            self.router.metrics.observe_ttft(self.state.ttft_s)
        else:
            self.router.metrics.observe_inter_token(now - self.state.last_token_at, len(tokens))
        self.state.last_token_at = now
        self.state.emitted.extend(tokens)
        text = self.decoder.add(tokens)
        response = public_pb2.GenerateResponse(
            request_id=self.prepared.request_id, token_ids=tokens, text=text, logprobs=logprobs
        )
        if self.state.route is None and self._attempt_route is not None:
            self.state.route = self._attempt_route
            response.route.CopyFrom(self.state.route)
        return response

    def _final_response(self) -> public_pb2.GenerateResponse:
        usage = common_pb2.Usage(
            prompt_tokens=len(self.prepared.prompt),
            completion_tokens=len(self.state.emitted),
            cached_tokens=self.state.cached_tokens,
            fetched_tokens=self.state.fetched_tokens,
        )
        response = public_pb2.GenerateResponse(
            request_id=self.prepared.request_id, finish_reason=self.state.finish_reason, usage=usage
        )
        if self.state.route is None and self._attempt_route is not None:
            self.state.route = self._attempt_route
            response.route.CopyFrom(self.state.route)
        return response

    def _worker_request(
        self, worker_request_id: str, prompt: list[int], remaining: int
    ) -> worker_pb2.WorkerRequest:
        sampling = sampling_to_proto(self.prepared.params, max_tokens=remaining)
        return worker_pb2.WorkerRequest(
            request_id=worker_request_id,
            session_id=self.prepared.session_id,
            prompt_token_ids=prompt,
            sampling=sampling,
            cache_salt=self.prepared.tenant,
        )

    def _cancel_reservation(self, decode: WorkerHandle, worker_request_id: str) -> None:
        """Idempotent; if the worker is gone its reaper (or its death) frees the pages anyway."""
        with contextlib.suppress(grpc.RpcError):
            decode.decode.CancelReservation(
                worker_pb2.CancelReservationRequest(request_id=worker_request_id), timeout=CONTROL_TIMEOUT_S
            )


class _StreamEndedEarly(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the worker's stream ended without a finish reason"


def _stream_ended_early() -> grpc.RpcError:
    return _StreamEndedEarly()


def _code(error: BaseException) -> grpc.StatusCode:
    if isinstance(error, grpc.RpcError) and callable(getattr(error, "code", None)):
        return error.code()
    return grpc.StatusCode.UNAVAILABLE  # NoWorkers


def _details(error: BaseException) -> str:
    if isinstance(error, grpc.RpcError) and callable(getattr(error, "details", None)):
        return error.details() or ""
    return str(error)


def _final_error(error: BaseException, attempts: int) -> Exception:
    """What the client is told once retrying is over: a status it can act on, never UNKNOWN."""
    code, details = _code(error), _details(error)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        hint = retry_after_ms(error) if isinstance(error, grpc.RpcError) else 500
        return AdmissionRejected(f"every worker is full ({details})", retry_after_ms=hint)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ValueError(details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TimeoutError(f"a worker call ran past its deadline: {details}")
    if isinstance(error, NoWorkers):
        return error
    return ServiceUnavailable(f"request failed after {attempts} attempt(s): {code.name}: {details}")
