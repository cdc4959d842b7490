"""Publishing a worker's KV events straight to a shared prefix index (Redis), with a lease.

A thread follows the worker's `KvEventHub`, publishes each batch (the index client keeps a record
and resyncs Redis after an outage) and heartbeats the lease every `ttl / 3`. On drain the worker
leaves the index."""

from __future__ import annotations

import logging
import queue
import threading
import time

from prefix_index.base import IndexUnavailable, index_events_by_namespace
from prefix_index.factory import create_index

log = logging.getLogger(__name__)
LEASE_TTL_S = 6.0


class IndexPublisher:
    def __init__(self, spec: str, core, ttl_s: float = LEASE_TTL_S) -> None:
        self.index = create_index(spec)
        self.core = core
        self.ttl_s = ttl_s
        self._stopped = threading.Event()
        self._events = core.hub.subscribe()
        self._thread = threading.Thread(target=self._run, name="index-publisher", daemon=True)

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
        except IndexUnavailable:
            log.warning("index unavailable while leaving; the lease will expire instead")
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
                self.index.publish(worker_id, epoch, namespace, events)
            except IndexUnavailable:
                pass  # kept in the client's record; resent when Redis answers again

    def _heartbeat(self) -> None:
        try:
            self.index.heartbeat(self.core.config.worker_id, self.core.epoch, self.ttl_s)
        except IndexUnavailable:
            log.debug("index unavailable for heartbeat")
        except Exception:  # noqa: BLE001 - keep serving whatever the index does
            log.exception("heartbeat failed")
