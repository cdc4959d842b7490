"""What each worker has published: per worker an epoch and, per namespace, block hash → flags.

The embedded index stores exactly this; the Redis index keeps it as the client-side record from
which a worker's entries are republished after Redis lost them (restart, outage, lapsed lease).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prefix_index.base import IndexEvent

BLOCK = 1
CHECKPOINT = 2


@dataclass(slots=True)
class WorkerRecord:
    epoch: int
    entries: dict[str, dict[int, int]] = field(default_factory=dict)  # namespace → hash → flags

    def apply(self, namespace: str, event: IndexEvent) -> None:
        flags_of = self.entries.setdefault(namespace, {})
        for bit, hashes in ((BLOCK, event.block_hashes), (CHECKPOINT, event.checkpoint_hashes)):
            for h in hashes:
                old = flags_of.get(h, 0)
                new = old | bit if event.kind == "stored" else old & ~bit
                if new:
                    flags_of[h] = new
                else:
                    flags_of.pop(h, None)
        if not flags_of:
            del self.entries[namespace]

    def as_events(self) -> Iterator[tuple[str, IndexEvent]]:
        """Everything held, as one `stored` event per namespace."""
        for namespace, flags_of in self.entries.items():
            blocks = tuple(h for h, f in flags_of.items() if f & BLOCK)
            checkpoints = tuple(h for h, f in flags_of.items() if f & CHECKPOINT)
            yield namespace, IndexEvent("stored", blocks, checkpoints)


class PublishedRecords:
    """Not thread-safe on its own: the owning index holds its lock around every call."""

    def __init__(self) -> None:
        self._workers: dict[str, WorkerRecord] = {}

    def apply(self, worker_id: str, epoch: int, namespace: str, events: Sequence[IndexEvent]) -> bool:
        """Returns False (and changes nothing) for events of an epoch older than the worker's."""
        record = self._workers.get(worker_id)
        if record is not None and epoch < record.epoch:
            return False
        if record is None or epoch > record.epoch:
            record = self._workers[worker_id] = WorkerRecord(epoch)
        for event in events:
            record.apply(namespace, event)
        return True

    def renew_epoch(self, worker_id: str, epoch: int) -> bool:
        """A lease for `epoch`: drops the record of an older epoch. False if `epoch` is older."""
        record = self._workers.get(worker_id)
        if record is not None and epoch < record.epoch:
            return False
        if record is None or epoch > record.epoch:
            self._workers[worker_id] = WorkerRecord(epoch)
        return True

    def get(self, worker_id: str) -> WorkerRecord | None:
        return self._workers.get(worker_id)

    def clear(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    def items(self) -> Iterator[tuple[str, WorkerRecord]]:
        return iter(self._workers.items())
