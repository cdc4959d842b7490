"""What a decode worker holds right after a session's request finished there, before its KV events
say so.

On finish the decode worker inserts prompt + output into its radix cache and reports that in
`stored` events, which reach the index asynchronously (the router's SubscribeKvEvents stream, or the
worker's Redis publisher). An agent sends its next turn the moment the answer is complete, often
before those events: the lookup then finds nothing on the decode worker, and the policy
disaggregates to a prefill worker that holds nothing and recomputes the whole context.

So the router records, per session, what the finish left on the decode worker: the block hashes of
the full blocks of prompt + computed output (hashed like every prompt, model id + tenant mixed into
the chain) and the block end of the checkpoint the worker keeps there. A lookup merges that claim
into the index's hits; the larger wins.

The claim stays router-local in both index modes. It is a guess, not an event: written into a shared
(Redis) index it would reach routers that get the worker's real events anyway, outlive this router,
and race the worker's `removed` events (a removal applied before the guess would leave an entry
nobody removes). Here it is bounded and short-lived, and the worker's own word wins:
- an entry counts for `ttl_s` and only for the worker epoch it was made under (a restart voids it);
- once the index shows at least as much for that worker, the entry retires: from then on the
  worker's real `stored` and `removed` events are the truth;
- a false claim (evicted meanwhile, cache off, a restart not seen yet) is caught like any index
  claim: the decode worker's `Reserve` reply refutes it, the route turns disaggregated on the same
  reservation (`GenerateFlow._check_claim`) and the entry is forgotten.
Sessions are keyed "<tenant>\\x1f<session>", so no claim crosses tenants; a request without a
session id records nothing (the index alone serves it). Bounded by count and bytes, LRU.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from prefix_index.base import PrefixHit

ENTRY_OVERHEAD_BYTES = 256  # the entry, its dict slot, the worker id


@dataclass(frozen=True, slots=True)
class FinishedPrefix:
    worker_id: str
    epoch: int  # the worker's epoch when it finished: a restart voids the claim
    hashes: np.ndarray  # uint64 hashes of the full blocks it holds, chained from the first
    checkpoint_blocks: int  # the block end of its state checkpoint there (0: none claimed)
    expires: float

    def hit(self, prompt_hashes: Sequence[int]) -> PrefixHit | None:
        """The claim as the index would answer it for this prompt (None when nothing matches)."""
        span = min(len(prompt_hashes), len(self.hashes))
        if span == 0:
            return None
        prompt = np.fromiter(prompt_hashes[:span], dtype=np.uint64, count=span)
        differ = np.flatnonzero(prompt != self.hashes[:span])
        blocks = int(differ[0]) if differ.size else span  # chained: one difference ends the match
        if blocks == 0:
            return None
        checkpoint = self.checkpoint_blocks if self.checkpoint_blocks <= blocks else 0
        return PrefixHit(self.worker_id, blocks, checkpoint)


class FinishedPrefixes:
    """Thread-safe. `clock` (monotonic seconds) is injectable so tests can expire entries."""

    def __init__(
        self, ttl_s: float = 60.0, max_sessions: int = 10_000, max_bytes: int = 1 << 26, clock=time.monotonic
    ) -> None:
        if ttl_s < 0 or max_sessions < 0 or max_bytes < 0:
            raise ValueError(
                f"bounds must be >= 0, got ttl_s={ttl_s} max_sessions={max_sessions} max_bytes={max_bytes}"
            )
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self.bytes = 0
        self._clock = clock
        self._entries: OrderedDict[str, FinishedPrefix] = OrderedDict()
        self._lock = threading.Lock()

    def record(
        self, session_key: str, worker_id: str, epoch: int, hashes: Sequence[int], checkpoint_blocks: int
    ) -> None:
        """What the session's finished request left on `worker_id` (replaces the session's last claim)."""
        if not session_key or not hashes or self.ttl_s == 0:
            return
        if not 0 <= checkpoint_blocks <= len(hashes):
            raise ValueError(f"checkpoint_blocks {checkpoint_blocks} outside [0, {len(hashes)}]")
        entry = FinishedPrefix(
            worker_id,
            epoch,
            np.asarray(hashes, dtype=np.uint64),
            checkpoint_blocks,
            self._clock() + self.ttl_s,
        )
        with self._lock:
            self._drop(session_key)
            self._entries[session_key] = entry
            self.bytes += _bytes(session_key, entry)
            now = self._clock()
            while self._entries and (
                len(self._entries) > self.max_sessions
                or self.bytes > self.max_bytes
                or next(iter(self._entries.values())).expires <= now  # oldest first: same ttl for all
            ):
                self._drop(next(iter(self._entries)))

    def merge(
        self,
        session_key: str,
        prompt_hashes: Sequence[int],
        index_hits: Mapping[str, PrefixHit],
        epochs: Mapping[str, int],
    ) -> dict[str, PrefixHit]:
        """`index_hits` with the session's claim merged in. `epochs`: the routable workers' current
        epochs; a claim on a worker not among them, or of another epoch, counts for nothing."""
        hits = dict(index_hits)
        if not session_key:
            return hits
        with self._lock:
            entry = self._entries.get(session_key)
            if entry is None:
                return hits
            if entry.expires <= self._clock() or epochs.get(entry.worker_id, entry.epoch) != entry.epoch:
                self._drop(session_key)
                return hits
        claimed = entry.hit(prompt_hashes)
        if claimed is None or entry.worker_id not in epochs:
            return hits
        known = hits.get(entry.worker_id)
        if (
            known is not None
            and known.blocks >= claimed.blocks
            and known.checkpoint_blocks >= claimed.checkpoint_blocks
        ):
            self.forget(session_key, entry.worker_id)  # the index caught up: its events rule from now on
            return hits
        hits[entry.worker_id] = PrefixHit(
            entry.worker_id,
            max(claimed.blocks, known.blocks if known else 0),
            max(claimed.checkpoint_blocks, known.checkpoint_blocks if known else 0),
        )
        return hits

    def forget(self, session_key: str, worker_id: str | None = None) -> None:
        """Drop the session's claim (only if it is on `worker_id`, when given)."""
        with self._lock:
            entry = self._entries.get(session_key)
            if entry is not None and (worker_id is None or entry.worker_id == worker_id):
                self._drop(session_key)

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, session_key: str) -> None:
        entry = self._entries.pop(session_key, None)
        if entry is not None:
            self.bytes -= _bytes(session_key, entry)


def end_of_turn_checkpoint(
    prompt_tokens: int, computed_tokens: int, block_size: int, local_prefill: bool
) -> int:
    """The block end where a decode worker keeps a state checkpoint after a request finished, as
    `engine.cache.prefix_cache.PrefixCache.cache_finished` leaves it: its rolling decode snapshot
    at the last block end decoding reached, else, when it prefilled the prompt itself, the
    prompt-end checkpoint (the same block end then). A disaggregated request whose decode reached
    no block end past the prompt leaves none (its state arrived at the prompt's unaligned end)."""
    last = computed_tokens // block_size
    if local_prefill or last * block_size > prompt_tokens or computed_tokens % block_size == 0:
        return last
    return 0


def _bytes(session_key: str, entry: FinishedPrefix) -> int:
    return len(session_key) + entry.hashes.nbytes + ENTRY_OVERHEAD_BYTES
