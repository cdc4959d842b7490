"""The global prefix index: which worker holds which prefix of a prompt, and where it can resume.

Workers publish `stored` / `removed` events for the KV blocks (and DeltaNet state checkpoints) their
radix cache holds; the router looks a prompt's block hashes up and gets, per worker, how many leading
blocks it holds and the deepest of those block ends where it also holds a state checkpoint. For a
hybrid model only that checkpoint-ended prefix is usable: without the recurrent state at the end of
a prefix, its attention pages alone cannot resume the sequence.

Lifecycle of a worker in the index:
1. On (re)start a worker picks a new `epoch` (larger than any before: e.g. `time.time_ns()`) and
   calls `heartbeat(worker_id, epoch, ttl_s)` every `ttl_s / 3` or so. A lease of a new epoch
   retires every entry of older epochs; publishing with an older epoch is ignored.
2. It publishes its radix cache's events with `publish(worker_id, epoch, namespace, events)`.
3. Lookups match a worker only while its lease is alive and only entries of its leased epoch.
   When a lease lapses the worker stops matching; a later heartbeat with the same epoch brings back
   everything it published (the Redis index republishes it from the client's own record).
4. Drain / scale down / deliberate restart: `clear_worker(worker_id)` removes it entirely.

Rebuilding a worker's entries from scratch (e.g. a publisher process that lost its record) is
`clear_worker(w)` then `publish(w, epoch, ns, [IndexEvent("stored", all_blocks, all_checkpoints)])`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

MAX_HASH = (1 << 64) - 1


class IndexUnavailable(RuntimeError):
    """The index backend cannot be reached; route by affinity and load instead."""


class StaleEpoch(ValueError):
    """A heartbeat from an epoch older than the worker's current one (a zombie process)."""


@dataclass(frozen=True, slots=True)
class IndexEvent:
    """What a worker's cache did: stored or removed these blocks and / or checkpoint ends.

    `checkpoint_hashes` are block hashes at whose end the worker holds a recurrent-state checkpoint.
    The two parts are independent: a checkpoint can be evicted while its block stays, and a removed
    block's checkpoint is only removed if listed too (a checkpoint without its block never matches).
    """

    kind: Literal["stored", "removed"]
    block_hashes: tuple[int, ...] = ()
    checkpoint_hashes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("stored", "removed"):
            raise ValueError(f"IndexEvent.kind must be 'stored' or 'removed', got {self.kind!r}")
        for h in (*self.block_hashes, *self.checkpoint_hashes):
            check_hash(h)


@dataclass(frozen=True, slots=True)
class PrefixHit:
    """One worker's match for a prompt.

    `blocks`: length of the leading run of the prompt's block hashes this worker holds.
    `checkpoint_blocks`: the deepest block end <= `blocks` where it also holds a state checkpoint
    (0 when none); for a hybrid model only this many blocks are usable.
    """

    worker_id: str
    blocks: int
    checkpoint_blocks: int


def check_hash(h: int) -> int:
    if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h <= MAX_HASH:
        raise ValueError(f"block hash must be an unsigned 64-bit int, got {h!r}")
    return h


def check_hashes(hashes: Sequence[int]) -> list[int]:
    """`check_hash` for a whole prompt, vectorized when every element is a plain int."""
    values = list(hashes)
    if all(type(h) is int for h in values):
        try:
            np.array(values, dtype=np.uint64)  # raises OverflowError outside [0, 2**64)
            return values
        except OverflowError:
            pass
    return [check_hash(h) for h in values]


def check_worker(worker_id: str, epoch: int | None = None) -> None:
    if not isinstance(worker_id, str) or not worker_id or "\0" in worker_id:
        raise ValueError(f"worker_id must be a non-empty string without NUL, got {worker_id!r}")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")


def check_namespace(namespace: str) -> None:
    if not isinstance(namespace, str) or not namespace or "\0" in namespace:
        raise ValueError(
            f"namespace must be a non-empty string without NUL (model id + tenant), got {namespace!r}"
        )


def check_ttl(ttl_s: float) -> None:
    if not ttl_s > 0:
        raise ValueError(f"lease ttl_s must be > 0, got {ttl_s!r}")


def namespace_for(model_id: str, tenant: str) -> str:
    """The index namespace of a (model, tenant): no hit ever crosses either."""
    return f"{model_id}\x1f{tenant}"


class PrefixIndex(abc.ABC):
    """Where prefixes live. Implementations: `EmbeddedPrefixIndex`, `RedisPrefixIndex`."""

    @abc.abstractmethod
    def publish(self, worker_id: str, epoch: int, namespace: str, events: Sequence[IndexEvent]) -> bool:
        """Apply a worker's cache events in order. Returns False when they are ignored (an epoch
        older than the worker's) or could not reach the backend yet (then kept, and sent with the
        next successful publish or heartbeat)."""

    @abc.abstractmethod
    def heartbeat(self, worker_id: str, epoch: int, ttl_s: float, max_epoch: int | None = None) -> bool:
        """Hold (or take) the worker's lease for `ttl_s` seconds. True when the lease of this epoch
        was still alive; False when it was (re)created. A current epoch above `max_epoch` (or not a
        number at all) is absurd, not newer: it is reset and this epoch takes its place. Raises
        IndexUnavailable, StaleEpoch."""

    @abc.abstractmethod
    def clear_worker(self, worker_id: str) -> None:
        """Forget the worker: its lease and every entry of every epoch and namespace."""

    @abc.abstractmethod
    def lookup(
        self, namespace: str, block_hashes: Sequence[int], workers: Sequence[str] | None = None
    ) -> dict[str, PrefixHit]:
        """Per live worker holding at least the first block, its `PrefixHit`. Stops at the first
        block nobody (still in the run) holds. `workers`: consider only these (the router passes
        the workers it can route to, which bounds the work whatever the backend holds). Raises
        IndexUnavailable."""

    @abc.abstractmethod
    def workers(self) -> dict[str, int]:
        """Live workers (lease alive) → their epoch. Raises IndexUnavailable."""

    def close(self) -> None:  # noqa: B027 - optional for in-memory implementations
        """Release connections."""

    def __enter__(self) -> PrefixIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def index_events_by_namespace(batch) -> dict[str, list[IndexEvent]]:
    """A wire `KvEventBatch` (read by field name, so this package needs no generated protos) as
    prefix-index events, grouped by namespace (what `PrefixIndex.publish` takes)."""
    grouped: dict[str, list[IndexEvent]] = {}
    for event in batch.events:
        grouped.setdefault(event.namespace, []).append(
            IndexEvent(event.kind, tuple(event.block_hashes), tuple(event.checkpoint_hashes))
        )
    return grouped
