"""The router's state and decisions: validating requests, looking prefixes up, routing, running
flows, scaling. The gRPC servicers in `router/service.py` are thin wrappers around it."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from baton_pb.v1 import admin_pb2, public_pb2, worker_pb2
from engine.cache.hashing import cache_extra
from engine.model_config import ModelConfig
from engine.tokenizer import Tokenizer
from prefix_index.base import IndexUnavailable, PrefixIndex
from router.config import RouterConfig
from router.generate import GenerateFlow, NoWorkers
from router.metrics import RouterMetrics
from router.prompt_hashes import PromptHasher
from router.prompts import PreparedRequest, prepare
from router.registry import WorkerHandle, WorkerRegistry
from router.sessions import SessionTable
from rpc.errors import AdmissionRejected, NotFound, UnknownRequest
from rpc.logs import request_context

log = logging.getLogger(__name__)
DRAIN_POLL_S = 0.2


@dataclass
class RoutedRequest:
    decode: WorkerHandle
    prefill: WorkerHandle | None
    fetch: worker_pb2.FetchSource | None
    cached_tokens: int
    reason: str
    explain_table: str

    def route_info(self, explain: bool) -> public_pb2.RouteInfo:
        return public_pb2.RouteInfo(
            prefill_worker=self.prefill.worker_id if self.prefill else "",
            decode_worker=self.decode.worker_id,
            reason=self.reason,
            explain=self.explain_table if explain else "",
        )


class RouterCore:
    def __init__(self, config: RouterConfig, pool, index: PrefixIndex, metrics: RouterMetrics | None = None) -> None:
        self.config = config
        self.pool = pool
        self.index = index
        self.tokenizer = Tokenizer.from_dir(config.model)
        self.model_config = ModelConfig.from_json(Path(config.model) / "config.json")
        self.model_id = Path(config.model).resolve().name
        self.max_context = int(getattr(self.model_config, "max_position_embeddings", 0) or 32768)
        self.sessions = SessionTable(config.max_sessions, config.session_ttl_s)
        self.hasher = PromptHasher(config.block_size)
        self.metrics = metrics or RouterMetrics()
        self.metrics.set_model_name(self.model_id)
        self.registry = WorkerRegistry(pool, index, feed_index=config.index == "embedded", poll_s=config.load_poll_s, tls=config.tls if config.tls.ca else None)
        from router.policy import RoutingConfig, RoutingPolicy

        self.policy = RoutingPolicy(
            RoutingConfig(
                block_size=config.block_size,
                local_prefill_threshold=config.local_prefill_threshold,
                require_checkpoint=len(self.model_config.linear_layer_ids) > 0,
            )
        )
        self._flows: dict[str, GenerateFlow] = {}
        self._lock = threading.Lock()
        self._in_flight = 0

    # ---- public API ----------------------------------------------------------------------------
    def generate(self, request: public_pb2.GenerateRequest, tenant: str) -> Iterator[public_pb2.GenerateResponse]:
        if request.model and request.model not in (self.model_id, self.config.model):
            raise UnknownModel(f"unknown model {request.model!r}; this router serves {self.model_id!r}")
        request_id = request.request_id or uuid.uuid4().hex
        with request_context(request_id, request.session_id):
            yield from self._generate(request, tenant, request_id)

    def _generate(self, request, tenant: str, request_id: str) -> Iterator[public_pb2.GenerateResponse]:
        prepared = prepare(
            request,
            self.tokenizer,
            request_id=request_id,
            tenant=tenant,
            vocab_size=self.model_config.vocab_size,
            max_context=self.max_context,
            default_max_tokens=self.config.default_max_tokens,
            max_tokens_limit=self.config.max_tokens_limit or self.max_context,
        )
        self.metrics.observe_prompt(len(prepared.prompt))
        with self._admitted(), self._registered(GenerateFlow(self, prepared, request.explain)) as flow:
            status = "ok"
            try:
                yield from flow.run()
            except BaseException:
                status = "error"
                raise
            finally:
                self.metrics.finish_request(status, flow.state, time.perf_counter() - flow.started)

    def abort(self, request_id: str) -> bool:
        with self._lock:
            flow = self._flows.get(request_id)
        if flow is None:
            raise UnknownRequest(f"no running request {request_id!r}")
        flow.abort()
        return True

    def model_info(self) -> public_pb2.ModelInfo:
        config = self.model_config
        return public_pb2.ModelInfo(
            model=self.model_id,
            model_type=config.model_type,
            vocab_size=config.vocab_size,
            max_context=self.max_context,
            block_size=self.config.block_size,
            num_attention_layers=len(config.attention_layer_ids),
            num_linear_layers=len(config.linear_layer_ids),
            has_mtp=bool(getattr(config, "mtp_num_hidden_layers", 0)),
        )

    # ---- routing -------------------------------------------------------------------------------
    def route(self, prepared: PreparedRequest, prompt: list[int]) -> RoutedRequest:
        decode_workers = self.registry.workers("decode", routable=True)
        if not decode_workers:
            raise NoWorkers("no decode worker is available")
        prefill_workers = self.registry.workers("prefill", routable=True)
        hits = self._lookup(prepared.tenant, prompt, prepared.session_id)
        session = self.sessions.get(prepared.session_id)
        decision = self._decide(
            prompt_tokens=len(prompt),
            hits=hits,
            prefill_workers=[_candidate(h) for h in prefill_workers],
            decode_workers=[_candidate(h) for h in decode_workers],
            affinity_decode=session.decode_worker if session else "",
            affinity_prefill=session.prefill_worker if session else "",
        )
        decode = self.registry.by_id(decision.decode_worker)
        prefill = self.registry.by_id(decision.prefill_worker) if decision.prefill_worker else None
        fetch = None
        if prefill is not None and decision.fetch_from:
            holder = self.registry.by_id(decision.fetch_from)
            if holder is not None:
                fetch = worker_pb2.FetchSource(worker_id=holder.worker_id, address=holder.address, blocks=decision.fetch_blocks)
        return RoutedRequest(decode, prefill, fetch, decision.cached_tokens, decision.reason, decision.explain())

    def _decide(self, **inputs):
        from router.policy import NoRoutableWorker

        try:
            return self.policy.route(**inputs)
        except NoRoutableWorker as error:
            raise NoWorkers(str(error)) from error

    def _lookup(self, tenant: str, prompt: list[int], session_id: str = "") -> dict:
        hashes = self.hasher.hashes(prompt, cache_extra(self.model_id, tenant), session_id)
        started = time.perf_counter()
        try:
            # One namespace per model: the tenant is already mixed into every block hash.
            hits = self.index.lookup(self.model_id, hashes)
        except IndexUnavailable:
            self.metrics.count("index_unavailable")
            return {}
        finally:
            self.metrics.observe_index_lookup(time.perf_counter() - started)
        return hits

    # ---- admin ---------------------------------------------------------------------------------
    def list_workers(self) -> admin_pb2.ListWorkersResponse:
        self.registry.refresh()
        infos = []
        for handle in self.registry.workers():
            info = admin_pb2.WorkerInfo()
            info.CopyFrom(handle.info)
            info.address, info.role = handle.address, handle.role
            info.draining, info.healthy = handle.draining, handle.healthy
            info.worker_id, info.state = handle.worker_id, handle.state
            infos.append(info)
        for member in self.pool.starting():
            infos.append(admin_pb2.WorkerInfo(worker_id=member.worker_id, role=member.role, address=member.address, state="loading"))
        return admin_pb2.ListWorkersResponse(workers=infos)

    def drain(self, worker_id: str, remove: bool = False) -> None:
        handle = self.registry.by_id(worker_id)
        if handle is None:
            raise UnknownRequest(f"unknown worker {worker_id!r}")
        handle.draining = True
        handle.control.Drain(worker_pb2.WorkerDrainRequest(), timeout=5)
        if remove:
            threading.Thread(target=self._finish_drain, args=(handle,), daemon=True).start()

    def scale(self, prefill: int, decode: int) -> admin_pb2.ListWorkersResponse:
        from router.scaling import rescale

        rescale(self, prefill, decode)
        return self.list_workers()

    def _finish_drain(self, handle: WorkerHandle, timeout_s: float = 300.0) -> None:
        """Wait until the drained worker has no request in flight, then remove it from the pool."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._busy(handle):
            time.sleep(DRAIN_POLL_S)
        self.registry.mark_down(handle, verify=False)
        self.pool.remove(handle.info.worker_id or handle.address)
        self.registry.refresh()

    def _busy(self, handle: WorkerHandle) -> bool:
        with self._lock:
            flows = list(self._flows.values())
        if any(h is handle for flow in flows for h, _ in flow.state.current):
            return True
        try:
            info = handle.control.GetLoad(worker_pb2.GetLoadRequest(), timeout=2)
        except Exception:  # noqa: BLE001 - gone already
            return False
        return info.load.running_requests + info.load.waiting_requests + info.load.pending_transfers > 0

    # ---- bookkeeping ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _admitted(self):
        with self._lock:
            if self._in_flight >= self.config.max_in_flight:
                self.metrics.count_admission_rejected()
                raise AdmissionRejected(f"router is full ({self._in_flight} requests in flight)", retry_after_ms=500)
            self._in_flight += 1
        self.metrics.set_queue_depth(self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
            self.metrics.set_queue_depth(self._in_flight)

    @contextlib.contextmanager
    def _registered(self, flow: GenerateFlow):
        request_id = flow.prepared.request_id
        with self._lock:
            if request_id in self._flows:
                raise ValueError(f"request id {request_id!r} is already running")
            self._flows[request_id] = flow
        try:
            yield flow
        finally:
            with self._lock:
                self._flows.pop(request_id, None)

    def close(self) -> None:
        self.registry.stop()
        self.index.close()


class UnknownModel(NotFound):
    pass


def _candidate(handle: WorkerHandle):
    from router.policy import WorkerCandidate

    load = handle.info.load
    return WorkerCandidate(
        worker_id=handle.worker_id,
        queued_tokens=load.queued_tokens,
        running_requests=load.running_requests + load.waiting_requests,
        free_pages=load.free_pages,
        total_pages=load.total_pages,
        draining=handle.draining,
    )
