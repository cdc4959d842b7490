"""The router's live view of the workers: connections, loads (polled), draining flags, and — for
the embedded index — a KV event subscription per worker that feeds the prefix index."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from baton_pb.v1 import admin_pb2, worker_pb2, worker_pb2_grpc
from prefix_index.base import IndexUnavailable, PrefixIndex, index_events_by_namespace
from rpc.cluster_auth import ClusterCredential
from rpc.grpc_server import insecure_or_tls_channel
from rpc.tls import TlsConfig

log = logging.getLogger(__name__)
CLOSE_GRACE_S = 60.0  # a departed worker's channel stays open this long for calls still holding it
LOAD_TIMEOUT_S = 10.0  # a busy engine answers between steps; long prefill steps take seconds
FAILURES_BEFORE_DOWN = 3


class ModelMismatch(RuntimeError):
    """A worker serves other weights (another model identity) than the router."""


@dataclass
class WorkerHandle:
    address: str
    role: str
    channel: grpc.Channel
    control: worker_pb2_grpc.WorkerControlStub
    prefill: worker_pb2_grpc.PrefillServiceStub
    decode: worker_pb2_grpc.DecodeServiceStub
    info: admin_pb2.WorkerInfo = field(default_factory=admin_pb2.WorkerInfo)
    failures: int = 0
    draining: bool = False
    healthy: bool = False
    subscription: threading.Thread | None = None
    refused: str = ""  # why the router will not route here (another model), or ""
    member_id: str = ""  # the pool's name for it (known before the worker ever answers)
    last_error: str = ""

    @property
    def worker_id(self) -> str:
        return self.info.worker_id or self.member_id or self.address

    @property
    def tp(self) -> int:
        """The worker's tensor-parallel degree, from the engine config it reports (1 before it answers)."""
        try:
            return int(json.loads(self.info.engine_config_json or "{}").get("tp", 1))
        except (ValueError, TypeError, AttributeError):
            return 1

    @property
    def state(self) -> str:
        """ready | loading (answers, not serving yet; or not polled yet) | draining | unreachable."""
        if self.draining:
            return "draining"
        if self.healthy:
            return "ready"
        return "unreachable" if self.failures else "loading"


class WorkerRegistry:
    def __init__(
        self,
        pool,
        index: PrefixIndex,
        *,
        feed_index: bool,
        poll_s: float = 0.5,
        tls: TlsConfig | None = None,
        model_identity: str = "",
        cluster: ClusterCredential | None = None,
        close_grace_s: float = CLOSE_GRACE_S,
    ) -> None:
        self.pool = pool
        self.model_identity = model_identity  # workers serving other weights are refused
        self.close_grace_s = close_grace_s
        self.index = index
        self.feed_index = feed_index
        self.poll_s = poll_s
        self.tls = tls
        self.cluster = cluster
        self._lock = threading.Lock()
        self._workers: dict[str, WorkerHandle] = {}  # by address
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._poll_forever, name="worker-registry", daemon=True)
        # Loads are polled in parallel: a stopped worker's probe (up to LOAD_TIMEOUT_S) must not
        # hold back the others' loads.
        self._pollers = ThreadPoolExecutor(max_workers=16, thread_name_prefix="load-poll")

    def start(self) -> WorkerRegistry:
        self.refresh()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._pollers.shutdown(wait=False)
        with self._lock:
            workers = list(self._workers.values())
        for handle in workers:
            handle.channel.close()

    # ---- queries ---------------------------------------------------------------------------------
    def workers(self, role: str | None = None, *, routable: bool = False) -> list[WorkerHandle]:
        with self._lock:
            handles = list(self._workers.values())
        if role:
            handles = [h for h in handles if h.role == role]
        if routable:
            handles = [h for h in handles if h.healthy and not h.draining and not h.refused]
        return handles

    def refusals(self, role: str | None = None) -> list[str]:
        """Why workers (of `role`) are refused: they serve other weights than the router."""
        return [h.refused for h in self.workers(role) if h.refused]

    def by_id(self, worker_id: str) -> WorkerHandle | None:
        return next((h for h in self.workers() if h.worker_id == worker_id or h.address == worker_id), None)

    def mark_down(self, handle: WorkerHandle, verify: bool = True, timeout_s: float = LOAD_TIMEOUT_S) -> None:
        """A call to this worker failed as if it were gone: unless it still answers a load probe
        (the failure was the request's, not the worker's), stop routing to it until it answers."""
        if verify:
            try:
                handle.control.GetLoad(worker_pb2.GetLoadRequest(), timeout=timeout_s)
                return
            except grpc.RpcError:
                pass
        handle.healthy = False
        self._clear_from_index(handle)

    # ---- polling ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        members = {m.address: m for m in self.pool.members()}
        with self._lock:
            gone = [a for a in self._workers if a not in members]
            removed = [self._workers.pop(a) for a in gone]
            for address, member in members.items():
                if address not in self._workers:
                    self._workers[address] = self._connect(address, member.role, member.worker_id)
            handles = list(self._workers.values())
        for handle in removed:
            self._clear_from_index(handle)
            # Not at once: a request may still hold the handle; on an open channel its call fails
            # as UNAVAILABLE (the worker is gone: retried elsewhere), on a closed one as a bad call.
            closer = threading.Timer(self.close_grace_s, handle.channel.close)
            closer.daemon = True
            closer.start()
        list(self._pollers.map(self._poll_load, handles))

    def _poll_forever(self) -> None:
        while not self._stopped.wait(self.poll_s):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - keep polling
                log.exception("worker refresh failed")

    def _connect(self, address: str, role: str, member_id: str = "") -> WorkerHandle:
        channel = insecure_or_tls_channel(address, self.tls, self.cluster)
        return WorkerHandle(
            address=address,
            role=role,
            member_id=member_id,
            channel=channel,
            control=worker_pb2_grpc.WorkerControlStub(channel),
            prefill=worker_pb2_grpc.PrefillServiceStub(channel),
            decode=worker_pb2_grpc.DecodeServiceStub(channel),
        )

    def _poll_load(self, handle: WorkerHandle) -> None:
        try:
            info = handle.control.GetLoad(worker_pb2.GetLoadRequest(), timeout=LOAD_TIMEOUT_S)
        except grpc.RpcError as error:
            handle.failures += 1
            handle.last_error = f"{error.code().name}: {error.details()}"
            if handle.failures >= FAILURES_BEFORE_DOWN and handle.healthy:
                log.warning("worker %s is down: %s", handle.address, error.code())
                self.mark_down(handle, verify=False)
            return
        restarted = handle.info.epoch and info.epoch != handle.info.epoch
        self._check_identity(handle, info)
        handle.info, handle.failures, handle.last_error = info, 0, ""
        handle.healthy = info.healthy
        handle.draining = handle.draining or info.draining
        if restarted:
            log.info("worker %s restarted with epoch %d", handle.worker_id, info.epoch)
        if self.feed_index and (handle.subscription is None or not handle.subscription.is_alive()):
            handle.subscription = threading.Thread(
                target=self._follow_events, args=(handle,), name=f"kv-events-{handle.worker_id}", daemon=True
            )
            handle.subscription.start()

    def _check_identity(self, handle: WorkerHandle, info: admin_pb2.WorkerInfo) -> None:
        if not self.model_identity or info.model_identity == self.model_identity:
            handle.refused = ""
            return
        refused = (
            f"worker {info.worker_id or handle.address} ({handle.address}) serves model identity "
            f"{info.model_identity or '(none reported)'} but the router serves {self.model_identity}: "
            "router and workers must load the same weights and config"
        )
        if refused != handle.refused:
            log.error("refusing %s", refused)
        handle.refused = refused

    # ---- embedded index feed ---------------------------------------------------------------------
    def _follow_events(self, handle: WorkerHandle) -> None:
        try:
            for batch in handle.control.SubscribeKvEvents(worker_pb2.SubscribeKvEventsRequest()):
                if self._stopped.is_set():
                    return
                self._apply(batch)
        except grpc.RpcError as error:
            log.info("KV events of %s ended: %s", handle.address, error.code())

    def _apply(self, batch: worker_pb2.KvEventBatch) -> None:
        if batch.snapshot:
            self.index.clear_worker(batch.worker_id)
        self.index.heartbeat(batch.worker_id, batch.epoch, ttl_s=3600.0)
        for namespace, events in index_events_by_namespace(batch).items():
            self.index.publish(batch.worker_id, batch.epoch, namespace, events)

    def _clear_from_index(self, handle: WorkerHandle) -> None:
        if not handle.info.worker_id:
            return
        try:
            self.index.clear_worker(handle.info.worker_id)
        except IndexUnavailable:
            log.warning("index unavailable while clearing %s", handle.worker_id)
        except Exception:  # noqa: BLE001
            log.exception("clearing %s from the index failed", handle.worker_id)

    def report_unreachable(self) -> list[WorkerHandle]:
        """Warn about every worker the last poll could not reach (called at router start)."""
        unreachable = [h for h in self.workers() if h.state == "unreachable"]
        for handle in unreachable:
            log.warning("%s worker at %s is unreachable: %s", handle.role, handle.address, handle.last_error)
        return unreachable

    def wait_until_ready(self, prefill: int, decode: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.refresh()
            if len(self.workers("prefill", routable=True)) >= prefill and len(self.workers("decode", routable=True)) >= decode:
                return
            if refusals := self.refusals():
                raise ModelMismatch(refusals[0])
            time.sleep(0.1)
        raise TimeoutError(f"workers not ready after {timeout_s:.0f} s: {[(h.address, h.healthy) for h in self.workers()]}")
