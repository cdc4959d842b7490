"""Publishing a worker's KV events straight to a shared prefix index (Redis), with a lease.

A thread follows the worker's `KvEventHub`, publishes each batch (the index client keeps a record
and resyncs Redis after an outage) and heartbeats the lease every `ttl / 3`. On drain the worker
leaves the index.

The thread survives every error: Redis down, a key of the wrong type, a garbage reply, a newer
epoch. Each is counted (`baton_worker_index_errors_<op>`), logged at most once per
`LOG_EVERY_S`, and the next heartbeat re-registers the worker (the heartbeat script repairs the
keys it relies on, and the client resends its whole record when the lease was lost). An epoch in the
index beyond `MAX_EPOCH_SKEW_MS` past this worker's clock-based one is not a newer process of the
same worker but corruption: the heartbeat resets it and the worker logs that it did."""

from __future__ import annotations

import logging
import queue
import threading
import time

from prefix_index.base import StaleEpoch, index_events_by_namespace
from prefix_index.factory import create_index

log = logging.getLogger(__name__)
LEASE_TTL_S = 6.0
MAX_EPOCH_SKEW_MS = 24 * 3600 * 1000  # epochs are milliseconds since 1970 (WorkerCore.epoch)
LOG_EVERY_S = 30.0


class IndexPublisher:
    def __init__(self, spec: str, core, ttl_s: float = LEASE_TTL_S, key_prefix: str = "baton") -> None:
        self.index = create_index(spec, key_prefix=key_prefix)
        self.core = core
        self.ttl_s = ttl_s
        self._stopped = threading.Event()
        self._events = core.hub.subscribe()
        self._thread = threading.Thread(target=self._run, name="index-publisher", daemon=True)
        self._last_log: dict[str, float] = {}

    def start(self) -> IndexPublisher:
        self._heartbeat()
        self._thread.start()
        return self

    def leave(self) -> None:
        """Stop publishing and remove this worker from the index (drain / scale down)."""
        self._stopped.set()
        self.core.hub.unsubscribe(self._events)
        try:
            self.index.clear_worker(self.core.config.worker_id)
        except Exception:  # noqa: BLE001 - leaving must not fail: the lease expires instead
            log.warning("could not leave the index; the lease will expire instead", exc_info=True)
        self.index.close()

    def _run(self) -> None:
        next_beat = 0.0
        while not self._stopped.is_set():
            now = time.monotonic()
            if now >= next_beat:
                self._heartbeat()
                next_beat = now + self.ttl_s / 3
            try:
                batch = self._events.get(timeout=self.ttl_s / 6)
            except queue.Empty:
                continue
            if batch is None:
                return
            self._publish(batch)

    def _publish(self, batch) -> None:
        worker_id, epoch = self.core.config.worker_id, self.core.epoch
        for namespace, events in index_events_by_namespace(batch).items():
            try:
                if not self.index.publish(worker_id, epoch, namespace, events):
                    self._failed("publish", "not applied yet; kept and resent after the next heartbeat")
            except Exception as error:  # noqa: BLE001 - kept in the client's record; resent later
                self._failed("publish", error)

    def _heartbeat(self) -> None:
        max_epoch = time.time_ns() // 1_000_000 + MAX_EPOCH_SKEW_MS
        try:
            self.index.heartbeat(self.core.config.worker_id, self.core.epoch, self.ttl_s, max_epoch=max_epoch)
        except StaleEpoch as error:  # a newer process serves as this worker id: stay out of its way
            self._failed("heartbeat", error)
        except Exception as error:  # noqa: BLE001 - keep serving whatever the index does
            self._failed("heartbeat", error)

    def _failed(self, op: str, error: object) -> None:
        self.core.count(f"index_errors_{op}", 1)
        now = time.monotonic()
        if now - self._last_log.get(op, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._last_log[op] = now
            log.warning("prefix index %s failed (%s); the worker keeps serving and retries", op, error)
