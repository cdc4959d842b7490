"""The router's state and decisions: validating requests, looking prefixes up, routing, running
flows, scaling. The gRPC servicers in `router/service.py` are thin wrappers around it."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from baton_pb.v1 import admin_pb2, public_pb2, worker_pb2
from engine.cache.hashing import cache_extra
from engine.identity import model_identity
from engine.model_config import ModelConfig
from engine.model_source import resolve_model
from engine.tokenizer import Tokenizer
from prefix_index.base import IndexUnavailable, PrefixIndex
from router.config import RouterConfig
from router.finished_prefixes import FinishedPrefixes, end_of_turn_checkpoint
from router.generate import GenerateFlow, NoWorkers
from router.limits import check_prompt_tokens, check_request, prompt_bytes
from router.metrics import RouterMetrics
from router.policy import NoRoutableWorker, RoutingConfig, RoutingPolicy, WorkerCandidate
from router.prompt_hashes import PromptHasher
from router.prompts import PreparedRequest, prepare
from router.registry import WorkerHandle, WorkerRegistry
from router.scaling import rescale
from router.sessions import SessionTable
from router.tokenize_pool import TokenizePool
from rpc.errors import AdmissionRejected, NotFound
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
    verify_with: WorkerHandle | None = None  # see RouteDecision.verify_with

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
        self.model_dir = resolve_model(config.model)
        self.tokenizer = Tokenizer.from_dir(self.model_dir)
        self.model_config = ModelConfig.from_json(self.model_dir / "config.json")
        # The served name (what clients may send as `model`) and the identity that namespaces the
        # cache hashes and the index: a digest of the weights, hashed without loading them.
        self.model_name = str(config.model) if not Path(config.model).is_dir() else self.model_dir.resolve().name
        self.model_id = model_identity(self.model_dir)
        self.max_context = int(getattr(self.model_config, "max_position_embeddings", 0) or 32768)
        self.limits = config.limits
        self.sessions = SessionTable(config.max_sessions, config.session_ttl_s, max_bytes=config.max_session_bytes)
        self.hasher = PromptHasher(config.block_size, max_bytes=config.max_session_bytes)
        # What finished requests left on decode workers, until their KV events tell the index.
        self.finished = FinishedPrefixes(
            config.finished_claim_ttl_s, config.max_sessions, max_bytes=config.max_session_bytes // 4
        )
        self.tokenize_pool = TokenizePool(config.tokenize_threads, config.tokenize_queue)
        self.metrics = metrics or RouterMetrics()
        self.metrics.set_model_name(self.model_name)
        self.registry = WorkerRegistry(pool, index, feed_index=config.index == "embedded", poll_s=config.load_poll_s, tls=config.tls if config.tls.ca else None, model_identity=self.model_id, cluster=config.cluster)
        self.policy = RoutingPolicy(
            RoutingConfig(
                block_size=config.block_size,
                local_prefill_threshold=config.local_prefill_threshold,
                require_checkpoint=len(self.model_config.linear_layer_ids) > 0,
            )
        )
        # Request ids are the client's, scoped per tenant: (tenant, id) → flow. Workers see a
        # server-made id (`PreparedRequest.internal_id`), so tenants never collide there either.
        self._flows: dict[tuple[str, str], GenerateFlow] = {}
        self._lock = threading.Lock()
        self._in_flight = 0

    # ---- public API ----------------------------------------------------------------------------
    def generate(self, request: public_pb2.GenerateRequest, tenant: str) -> Iterator[public_pb2.GenerateResponse]:
        if request.model and request.model not in (self.model_name, self.model_id, self.config.model):
            raise UnknownModel(f"unknown model {request.model!r}; this router serves {self.model_name!r}")
        check_request(request, self.limits)
        request_id = request.request_id or uuid.uuid4().hex
        with request_context(request_id, request.session_id):
            yield from self._generate(request, tenant, request_id)

    def _generate(self, request, tenant: str, request_id: str) -> Iterator[public_pb2.GenerateResponse]:
        prepared = self.tokenize_pool.run(lambda: self._prepare(request, request_id, tenant), prompt_bytes(request))
        check_prompt_tokens(len(prepared.prompt), self.limits)
        prepared = dataclasses.replace(prepared, internal_id=uuid.uuid4().hex)
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

    def _prepare(self, request: public_pb2.GenerateRequest, request_id: str, tenant: str) -> PreparedRequest:
        return prepare(
            request,
            self.tokenizer,
            request_id=request_id,
            tenant=tenant,
            vocab_size=self.model_config.vocab_size,
            max_context=self.max_context,
            default_max_tokens=self.config.default_max_tokens,
            max_tokens_limit=self.config.max_tokens_limit or self.max_context,
            allow_special_tokens_in_content=self.config.allow_special_tokens_in_content,
        )

    def abort(self, request_id: str, tenant: str = "") -> bool:
        """Aborts the caller's own request. Another tenant's id fails exactly like an unknown one."""
        with self._lock:
            flow = self._flows.get((tenant, request_id))
        if flow is None:
            raise NotFound(f"no running request {request_id[:128]!r}")
        flow.abort()
        return True

    def model_info(self) -> public_pb2.ModelInfo:
        config = self.model_config
        return public_pb2.ModelInfo(
            model=self.model_name,
            model_identity=self.model_id,
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
            refusals = self.registry.refusals("decode")
            raise NoWorkers("no decode worker is available" + (f": {refusals[0]}" if refusals else ""))
        prefill_workers = self.registry.workers("prefill", routable=True)
        candidates = [h.worker_id for h in (*decode_workers, *prefill_workers)]
        hashes = self._hashes(prepared.tenant, prompt, prepared.session_id)
        epochs = {h.worker_id: h.info.epoch for h in decode_workers}
        index_hits = self._index_hits(hashes, candidates)
        hits = self.finished.merge(prepared.session_key, hashes, index_hits, epochs)
        session = self.sessions.get(prepared.session_key)
        # Handles from the snapshot the decision is made on, by the ids the policy sees: a worker the
        # registry drops meanwhile (killed, removed) is then tried and fails over like any dead
        # worker, never a None route.
        decode_candidates = [_candidate(h) for h in decode_workers]
        prefill_candidates = [_candidate(h) for h in prefill_workers]
        handles = (*decode_workers, *prefill_workers)
        chosen = {c.worker_id: h for c, h in zip((*decode_candidates, *prefill_candidates), handles, strict=True)}
        decision = self._decide(
            prompt_tokens=len(prompt),
            hits=hits,
            prefill_workers=prefill_candidates,
            decode_workers=decode_candidates,
            affinity_decode=session.decode_worker if session else "",
            affinity_prefill=session.prefill_worker if session else "",
        )
        decode = chosen[decision.decode_worker]
        prefill = chosen[decision.prefill_worker] if decision.prefill_worker else None
        fetch = None
        if prefill is not None and decision.fetch_from:
            holder = self.registry.by_id(decision.fetch_from)
            if holder is not None:
                fetch = worker_pb2.FetchSource(worker_id=holder.worker_id, address=holder.address, blocks=decision.fetch_blocks)
        verify_with = chosen[decision.verify_with] if decision.verify_with else None
        reason = decision.reason
        if hits.get(decision.decode_worker) != index_hits.get(decision.decode_worker):
            reason += "; the decode worker's cache as the session's last finish left it (its KV events not in yet)"
            self.metrics.count("finished_claim_used")
        return RoutedRequest(decode, prefill, fetch, decision.cached_tokens, reason, decision.explain(), verify_with)

    def _decide(self, **inputs):
        try:
            return self.policy.route(**inputs)
        except NoRoutableWorker as error:
            raise NoWorkers(str(error)) from error

    def _lookup(self, tenant: str, prompt: list[int], session_id: str = "", workers: list[str] | None = None) -> dict:
        """The index's hits for a prompt (what the index alone knows, without finished claims)."""
        return self._index_hits(self._hashes(tenant, prompt, session_id), workers)

    def _hashes(self, tenant: str, prompt: list[int], session_id: str = "") -> list[int]:
        return self.hasher.hashes(prompt, cache_extra(self.model_id, tenant), session_id)

    def _index_hits(self, hashes: list[int], workers: list[str] | None = None) -> dict:
        """Hits of the workers the router can route to. Any index failure (unreachable, a key of the
        wrong type, a malformed value) is counted and routing goes on by affinity + load."""
        started = time.perf_counter()
        try:
            # One namespace per model: the tenant is already mixed into every block hash.
            hits = self.index.lookup(self.model_id, hashes, workers)
        except Exception as error:  # noqa: BLE001 - the documented fallback, whatever went wrong
            kind = "unavailable" if isinstance(error, IndexUnavailable) else type(error).__name__
            self.metrics.index_error("lookup", kind)
            self.metrics.count("index_unavailable")
            log.warning("prefix index lookup failed (%s); routing by affinity + load", error)
            return {}
        finally:
            self.metrics.observe_index_lookup(time.perf_counter() - started)
        return hits

    def record_finish(
        self, prepared: PreparedRequest, decode: WorkerHandle, sequence: list[int], attempt_prompt: int, local: bool
    ) -> None:
        """A request of the session finished on `decode`: claim what its radix cache now holds (the
        full blocks of the computed tokens, all but the last sampled one) until its KV events arrive.
        `attempt_prompt`: the prompt length of the attempt that finished; `local`: it prefilled that
        prompt itself."""
        if not prepared.session_key:
            return
        computed = len(sequence) - 1
        hashes = self._hashes(prepared.tenant, sequence[:computed], prepared.session_id)
        checkpoint = end_of_turn_checkpoint(attempt_prompt, computed, self.config.block_size, local)
        self.finished.record(prepared.session_key, decode.worker_id, decode.info.epoch, hashes, checkpoint)

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
            raise NotFound(f"unknown worker {worker_id!r}")
        handle.draining = True
        handle.control.Drain(worker_pb2.WorkerDrainRequest(), timeout=5)
        if remove:
            threading.Thread(target=self._finish_drain, args=(handle,), daemon=True).start()

    def scale(self, prefill: int, decode: int) -> admin_pb2.ListWorkersResponse:
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
        key = (flow.prepared.tenant, flow.prepared.request_id)
        with self._lock:
            if key in self._flows:
                raise ValueError(f"request id {key[1]!r} is already running")
            self._flows[key] = flow
        try:
            yield flow
        finally:
            with self._lock:
                self._flows.pop(key, None)

    def close(self) -> None:
        self.tokenize_pool.close()
        self.registry.stop()
        self.index.close()


class UnknownModel(NotFound):
    pass


def _candidate(handle: WorkerHandle):
    load = handle.info.load
    return WorkerCandidate(
        worker_id=handle.worker_id,
        queued_tokens=load.queued_tokens,
        running_requests=load.running_requests + load.waiting_requests,
        free_pages=load.free_pages,
        total_pages=load.total_pages,
        draining=handle.draining,
    )
