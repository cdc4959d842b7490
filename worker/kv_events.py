"""A worker's view of what its radix cache holds, fanned out as KV event batches to subscribers
(the router's embedded index) and, when configured, published to a shared prefix index (Redis).

It mirrors the held block and checkpoint hashes so a new subscriber (or Redis coming back) gets a
full snapshot first, then the changes."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable

from baton_pb.v1 import worker_pb2

log = logging.getLogger(__name__)


class KvEventHub:
    def __init__(self, worker_id: str, epoch: int, namespace: str) -> None:
        self.worker_id = worker_id
        self.epoch = epoch
        self.namespace = namespace
        self._lock = threading.Lock()
        self._blocks: set[int] = set()
        self._checkpoints: set[int] = set()
        self._subscribers: list[queue.Queue] = []

    # called on the engine thread by the radix cache
    def on_engine_event(self, event) -> None:
        message = worker_pb2.KvEvent(
            kind=event.kind,
            namespace=self.namespace,
            block_hashes=list(event.block_hashes),
            checkpoint_hashes=list(event.checkpoint_hashes),
        )
        with self._lock:
            if event.kind == "stored":
                self._blocks.update(event.block_hashes)
                self._checkpoints.update(event.checkpoint_hashes)
            else:
                self._blocks.difference_update(event.block_hashes)
                self._checkpoints.difference_update(event.block_hashes)
                self._checkpoints.difference_update(event.checkpoint_hashes)
            subscribers = list(self._subscribers)
        batch = self._batch([message], snapshot=False)
        for subscriber in subscribers:
            subscriber.put(batch)

    def snapshot(self) -> worker_pb2.KvEventBatch:
        with self._lock:
            stored = worker_pb2.KvEvent(
                kind="stored",
                namespace=self.namespace,
                block_hashes=sorted(self._blocks),
                checkpoint_hashes=sorted(self._checkpoints),
            )
        return self._batch([stored], snapshot=True)

    def subscribe(self) -> queue.Queue:
        """A queue that receives the snapshot first, then every batch; None ends it."""
        subscriber: queue.Queue = queue.Queue()
        with self._lock:
            self._subscribers.append(subscriber)
        subscriber.put(self.snapshot())
        return subscriber

    def unsubscribe(self, subscriber: queue.Queue) -> None:
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    def close(self) -> None:
        with self._lock:
            subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            subscriber.put(None)

    def held(self) -> tuple[set[int], set[int]]:
        with self._lock:
            return set(self._blocks), set(self._checkpoints)

    def _batch(self, events: Iterable[worker_pb2.KvEvent], snapshot: bool) -> worker_pb2.KvEventBatch:
        return worker_pb2.KvEventBatch(worker_id=self.worker_id, epoch=self.epoch, events=list(events), snapshot=snapshot)
