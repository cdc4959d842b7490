"""`EmbeddedPrefixIndex`: the in-process index (the default; one router, no Redis)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from itertools import repeat

import numpy as np

from prefix_index.base import (
    IndexEvent,
    PrefixHit,
    PrefixIndex,
    StaleEpoch,
    check_hashes,
    check_namespace,
    check_ttl,
    check_worker,
)
from prefix_index.records import BLOCK, CHECKPOINT, PublishedRecords


class EmbeddedPrefixIndex(PrefixIndex):
    """Thread-safe. `clock` (monotonic seconds) is injectable so tests can expire leases."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._records = PublishedRecords()
        self._leases: dict[str, tuple[int, float]] = {}  # worker → (epoch, deadline)

    def publish(self, worker_id: str, epoch: int, namespace: str, events: Sequence[IndexEvent]) -> bool:
        check_worker(worker_id, epoch)
        check_namespace(namespace)
        with self._lock:
            return self._records.apply(worker_id, epoch, namespace, events)

    def heartbeat(self, worker_id: str, epoch: int, ttl_s: float, max_epoch: int | None = None) -> bool:
        check_worker(worker_id, epoch)
        check_ttl(ttl_s)
        with self._lock:
            record = self._records.get(worker_id)
            if max_epoch is not None and record is not None and record.epoch > max_epoch:
                self._records.clear(worker_id)  # absurd: reset, as if never set
            if not self._records.renew_epoch(worker_id, epoch):
                raise StaleEpoch(f"worker {worker_id!r}: epoch {epoch} is older than its current one")
            now = self._clock()
            lease = self._leases.get(worker_id)
            continued = lease is not None and lease[0] == epoch and lease[1] > now
            self._leases[worker_id] = (epoch, now + ttl_s)
            return continued

    def clear_worker(self, worker_id: str) -> None:
        check_worker(worker_id)
        with self._lock:
            self._records.clear(worker_id)
            self._leases.pop(worker_id, None)

    def lookup(
        self, namespace: str, block_hashes: Sequence[int], workers: Sequence[str] | None = None
    ) -> dict[str, PrefixHit]:
        check_namespace(namespace)
        hashes = check_hashes(block_hashes)
        if not hashes:
            return {}
        wanted = None if workers is None else set(workers)
        with self._lock:
            hits = {}
            for worker_id, flags_of in self._live_entries(namespace):
                if wanted is not None and worker_id not in wanted:
                    continue
                hit = _walk(worker_id, flags_of, hashes)
                if hit is not None:
                    hits[worker_id] = hit
            return hits

    def workers(self) -> dict[str, int]:
        with self._lock:
            now = self._clock()
            return {w: epoch for w, (epoch, deadline) in self._leases.items() if deadline > now}

    def _live_entries(self, namespace: str):
        now = self._clock()
        for worker_id, (epoch, deadline) in self._leases.items():
            record = self._records.get(worker_id)
            if deadline > now and record is not None and record.epoch == epoch:
                flags_of = record.entries.get(namespace)
                if flags_of:
                    yield worker_id, flags_of


def _walk(worker_id: str, flags_of: dict[int, int], hashes: list[int]) -> PrefixHit | None:
    if not flags_of.get(hashes[0], 0) & BLOCK:
        return None  # most workers miss at the first block: no need to look further
    # The dict lookups run in C (map), the scan for the first miss and the deepest checkpoint in numpy.
    flags = np.fromiter(map(flags_of.get, hashes, repeat(0, len(hashes))), dtype=np.int8, count=len(hashes))
    missing = np.flatnonzero((flags & BLOCK) == 0)
    blocks = int(missing[0]) if missing.size else len(hashes)
    checkpoints = np.flatnonzero(flags[:blocks] & CHECKPOINT)
    checkpoint_blocks = int(checkpoints[-1]) + 1 if checkpoints.size else 0
    return PrefixHit(worker_id, blocks, checkpoint_blocks)
