"""The decode worker: a gRPC server around one engine and one transfer backend.

Life of a request here:
1. `Reserve` (from the router): the engine reserves pages and a DeltaNet state slot for the
   prompt; the first `cached_blocks` pages already hold a prefix this worker has cached, so the
   descriptor tells the prefill side to skip them. The backend starts expecting `transfer_id`.
2. The prefill worker writes KV pages layer by layer, then the recurrent state and the first
   token, then a manifest; the backend verifies the manifest before it reports DONE.
3. `Decode` (from the router): waits for DONE (or FAILED / the deadline → the reservation is
   freed and the router is told why), hands the first token to the engine and streams the rest.
4. On finish the engine inserts prompt + output into its radix cache with a state checkpoint at
   the end, and publishes `stored` events, so the session's next turn is cheap here.
A reservation whose `Decode` never comes (the router or the prefill worker died) is freed by the
reaper after its deadline. Deadlines are clamped to `--max-reservation-s`, and one tenant (cache
salt) may hold at most `--tenant-reservation-share` of the state slots in pending reservations, so
no caller can pin every slot. Token streams carry a heartbeat while nothing else is sent.
`Generate` is the colocated path: prefill here and decode (used for short uncached prompts —
conditional disaggregation — and in colocated mode).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from baton_pb.v1 import worker_pb2, worker_pb2_grpc
from rpc.convert import sampling_from_proto
from rpc.errors import AdmissionRejected, NotFound, TransferFailed, grpc_errors
from rpc.logs import request_context
from worker.core import WorkerCore
from worker.descriptors import descriptor_to_proto
from worker.token_stream import stream_tokens

log = logging.getLogger(__name__)
REAPER_PERIOD_S = 0.5
DEFAULT_TRANSFER_DEADLINE_S = 60.0


@dataclass(slots=True)
class PendingReservation:
    request_id: str
    transfer_id: str
    expires_at: float
    tenant: str = ""
    decoding: bool = False
    sharded: bool = False  # several ranks on either side, or another TP degree: worker/shard_transfer.py


class DecodeServicer(worker_pb2_grpc.DecodeServiceServicer):
    def __init__(self, core: WorkerCore) -> None:
        self.core = core
        self._lock = threading.Lock()
        self._pending: dict[str, PendingReservation] = {}
        total_slots = int(core.loop.call(lambda engine: engine.metrics())["slots_total"])
        self.tenant_limit = max(1, int(core.config.tenant_reservation_share * total_slots))
        self._reaper = threading.Thread(target=self._reap_expired, name="reservation-reaper", daemon=True)
        self._reaper.start()

    def Reserve(self, request, context):
        req = request.request
        with request_context(req.request_id, req.session_id), grpc_errors(context):
            if self.core.draining.is_set():
                raise AdmissionRejected("worker is draining", draining=True)
            params = sampling_from_proto(req.sampling)
            prompt = list(req.prompt_token_ids)
            deadline_s = self._deadline(request.deadline_s)
            transfer_id = request.transfer_id or req.request_id
            self._check_share(req.cache_salt)
            source_tp = request.source_tp or 1
            if source_tp < 0:
                raise ValueError(f"source_tp must be >= 0, got {request.source_tp}")
            sharded = self.core.shards.tp > 1 or source_tp != 1
            reservation = self.core.loop.call(
                lambda engine: engine.reserve(req.request_id, prompt, params, cache_salt=req.cache_salt)
            )
            try:
                if sharded:
                    descriptor = self.core.shards.expect(reservation, transfer_id, deadline_s, source_tp)
                else:
                    descriptor = descriptor_to_proto(self.core.backend.expect(
                        transfer_id, self._dst_units(reservation), deadline_s, skip_blocks=reservation.cached_blocks
                    ))  # fmt: skip
            except BaseException:
                self._release(req.request_id)
                raise
            with self._lock:
                self._pending[req.request_id] = PendingReservation(
                    req.request_id, transfer_id, time.monotonic() + deadline_s + 5.0, req.cache_salt, sharded=sharded
                )
            return worker_pb2.ReserveResponse(descriptor=descriptor, cached_blocks=reservation.cached_blocks)

    def Decode(self, request, context):
        with request_context(request.request_id), grpc_errors(context), self.core.admit():
            pending = self._claim(request.request_id)
            deadline = max(1.0, pending.expires_at - time.monotonic())
            if request.transfer_deadline_s > 0:
                deadline = min(deadline, request.transfer_deadline_s)
            result = None
            for result in self._wait_transfer(pending, deadline):
                if result is None:
                    yield worker_pb2.TokenChunk(heartbeat=True)
            self._transfers(pending).forget(pending.transfer_id)
            if result.status.name != "DONE":
                self._release(request.request_id)
                raise TransferFailed(f"transfer {pending.transfer_id} {result.status.name}: {result.reason}")
            outputs = self.core.loop.open_stream(request.request_id)
            self.core.loop.call(lambda engine: engine.commit_reservation(request.request_id, result.first_token))
            yield from stream_tokens(self.core, request.request_id, outputs, context)

    def Generate(self, request, context):
        req = request.request
        with request_context(req.request_id, req.session_id), grpc_errors(context), self.core.admit():
            params = sampling_from_proto(req.sampling)
            if not req.prompt_token_ids:
                raise ValueError("prompt is empty")
            outputs = self.core.loop.add_request(
                req.request_id, list(req.prompt_token_ids), params, cache_salt=req.cache_salt
            )
            yield from stream_tokens(self.core, req.request_id, outputs, context)

    def CancelReservation(self, request, context):
        with grpc_errors(context):
            with self._lock:
                pending = self._pending.pop(request.request_id, None)
            if pending is None:
                return worker_pb2.CancelReservationResponse(cancelled=False)
            self._transfers(pending).forget(pending.transfer_id)
            self._release(request.request_id)
            return worker_pb2.CancelReservationResponse(cancelled=True)

    def _transfers(self, pending: PendingReservation):
        """Who carries this reservation's transfer: the backend, or every rank (`worker/shard_transfer.py`)."""
        return self.core.shards if pending.sharded else self.core.backend

    def _wait_transfer(self, pending: PendingReservation, timeout_s: float):
        """Yields None every heartbeat interval while the transfer runs, then its result."""
        end = time.monotonic() + timeout_s
        while True:
            step = min(self.core.config.heartbeat_s, max(0.0, end - time.monotonic()))
            result = self._transfers(pending).wait(pending.transfer_id, timeout_s=step)
            if result.status.name in ("DONE", "FAILED") or time.monotonic() >= end:
                yield result
                return
            yield None

    def _deadline(self, requested: float) -> float:
        """The reservation's deadline: the default when unset, never above the configured maximum."""
        if requested != requested or requested < 0:  # NaN or negative
            raise ValueError(f"deadline_s must be a positive number of seconds, got {requested}")
        return min(requested or DEFAULT_TRANSFER_DEADLINE_S, self.core.config.max_reservation_s)

    def _check_share(self, tenant: str) -> None:
        with self._lock:
            held = sum(1 for p in self._pending.values() if p.tenant == tenant and not p.decoding)
        if held >= self.tenant_limit:
            raise AdmissionRejected(
                f"tenant holds {held} pending reservations here, its share of the state slots "
                f"(--tenant-reservation-share); retry when one is used or expires",
                retry_after_ms=500,
            )

    def _claim(self, request_id: str) -> PendingReservation:
        with self._lock:
            pending = self._pending.get(request_id)
            if pending is None or pending.decoding:
                raise NotFound(f"no reservation for request {request_id!r}")
            pending.decoding = True
            del self._pending[request_id]
        return pending

    def _dst_units(self, reservation) -> dict[str, list[int]]:
        slot = [reservation.state_slot]
        units = {"kv": list(reservation.page_ids)}
        if self.core.engine.cache.conv is not None and self.core.engine.cache.conv.numel():
            units.update(conv=slot, ssm=slot)
        return units

    def _release(self, request_id: str) -> None:
        try:
            self.core.loop.call(lambda engine: engine.release(request_id))
        except Exception:  # noqa: BLE001 - already gone
            log.debug("release of %s failed", request_id, exc_info=True)

    def _reap_expired(self) -> None:
        while True:
            time.sleep(REAPER_PERIOD_S)
            now = time.monotonic()
            with self._lock:
                expired = [p for p in self._pending.values() if p.expires_at < now]
                for pending in expired:
                    del self._pending[pending.request_id]
            for pending in expired:
                log.warning("reservation %s expired without a transfer; freeing it", pending.request_id)
                self._transfers(pending).forget(pending.transfer_id)
                self._release(pending.request_id)


def add_to_server(core: WorkerCore, server) -> None:
    """What `worker.launch.start_worker` calls to register this role's service."""
    worker_pb2_grpc.add_DecodeServiceServicer_to_server(DecodeServicer(core), server)
