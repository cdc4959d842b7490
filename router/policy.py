"""Routing policy: pick the decode worker and (maybe) a prefill worker for one request. Pure logic.

Score of a worker = cached tokens it saves − its load penalty, all in tokens:
- saved: the usable prefix it holds (for a hybrid model: up to its deepest state checkpoint), plus,
  when fetching is on, `fetch_value` per token of a longer usable prefix that a peer holds and it
  can pull through kvtransfer instead of recomputing;
- load penalty: queued tokens + a cost per running request + a cost for a nearly full page pool.
Session affinity: the session's previous worker gets a small bonus (with 0 it only breaks ties), as
long as its load penalty exceeds the least loaded candidate's by no more than
`affinity_max_overload_tokens`. With the index down (no hits) this is routing by affinity + load.
Conditional disaggregation: when the decode worker's own cache leaves fewer than
`local_prefill_threshold` tokens to compute, it prefills them itself. The index only *claims* that
cache (anyone who can write to Redis can forge a claim), so when local prefill rests on it the
decision also names the prefill worker to use if the claim is false (`verify_with`): the caller
checks the claim against the decode worker's reservation, which is the truth. Draining workers are
never chosen. Every decision carries its score table (`explain()`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from prefix_index.base import PrefixHit


class NoRoutableWorker(RuntimeError):
    """No decode worker can take the request (none, or all draining)."""


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    block_size: int = 16
    local_prefill_threshold: int = 512  # uncached tokens below this: the decode worker prefills
    require_checkpoint: bool = True  # hybrid model: only a checkpoint-ended prefix is usable
    queued_token_weight: float = 1.0
    running_request_tokens: float = 64.0
    memory_pressure_tokens: float = 1024.0  # penalty at a full page pool, linear in the used part
    affinity_bonus_tokens: float = 64.0
    affinity_max_overload_tokens: float = 4096.0
    fetch_enabled: bool = True
    fetch_value: float = 0.5  # a fetched token saves compute but costs transfer: worth half
    fetch_min_blocks: int = 4  # shorter gains are not worth a transfer round trip

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.local_prefill_threshold < 0 or self.fetch_min_blocks < 1:
            raise ValueError(f"invalid RoutingConfig: {self}")
        if not 0.0 <= self.fetch_value <= 1.0:
            raise ValueError(f"fetch_value must be within [0, 1], got {self.fetch_value}")


@dataclass(frozen=True, slots=True)
class WorkerCandidate:
    worker_id: str
    queued_tokens: int = 0
    running_requests: int = 0
    free_pages: int = 0
    total_pages: int = 0
    draining: bool = False


@dataclass(frozen=True, slots=True)
class ScoreRow:
    role: str  # "decode" | "prefill"
    worker_id: str
    cached_tokens: int  # usable prefix it holds itself
    fetch_tokens: int  # more it could pull from a peer
    load_penalty: float
    affinity_bonus: float
    score: float
    affinity: bool = False  # the session's worker, within the overload bound: wins ties
    draining: bool = False
    chosen: bool = False
    note: str = ""  # why affinity did not count, ...


@dataclass(frozen=True, slots=True)
class RouteDecision:
    decode_worker: str
    prefill_worker: str | None  # None: the decode worker prefills locally
    cached_tokens: int  # prompt tokens the prefilling worker does not compute
    reason: str
    scores: tuple[ScoreRow, ...] = field(default=())
    fetch_from: str | None = None  # the peer the prefill worker pulls the prefix from
    fetch_blocks: int = 0
    # Local prefill that rests on the index's claim of the decode worker's cache: the prefill worker
    # to use if its reservation shows the claim false (None: the route holds without the claim).
    verify_with: str | None = None

    def explain(self) -> str:
        """The score table, one row per candidate (what `explain=true` returns)."""
        header = (
            f"{'role':8} {'worker':20} {'cached':>7} {'fetch':>7} {'load':>9} {'affin':>6} {'score':>9}  note"
        )
        rows = [
            f"{r.role:8} {r.worker_id:20} {r.cached_tokens:7d} {r.fetch_tokens:7d} {r.load_penalty:9.1f} "
            f"{r.affinity_bonus:6.1f} {r.score:9.1f}  {_notes(r)}"
            for r in self.scores
        ]
        return "\n".join([f"reason: {self.reason}", header, *rows])


class RoutingPolicy:
    def __init__(self, config: RoutingConfig | None = None) -> None:
        self.config = config or RoutingConfig()

    def route(
        self,
        *,
        prompt_tokens: int,
        hits: Mapping[str, PrefixHit],
        prefill_workers: Sequence[WorkerCandidate],
        decode_workers: Sequence[WorkerCandidate],
        affinity_decode: str = "",
        affinity_prefill: str = "",
    ) -> RouteDecision:
        if prompt_tokens < 1:
            raise ValueError(f"prompt_tokens must be >= 1, got {prompt_tokens}")
        _check_unique(prefill_workers, decode_workers)
        cached = {w: self._usable_tokens(hit, prompt_tokens) for w, hit in hits.items()}
        routable = {c.worker_id for c in (*prefill_workers, *decode_workers) if not c.draining}
        best_peer = max((t for w, t in cached.items() if w in routable), default=0)

        decode_rows = self._score("decode", decode_workers, cached, best_peer, affinity_decode, False)
        decode = _pick(decode_rows)
        if decode is None:
            raise NoRoutableWorker("no decode worker can take new sessions (none, or all draining)")
        decode_cached = cached.get(decode.worker_id, 0)
        uncached = prompt_tokens - decode_cached
        prefill_rows = self._score("prefill", prefill_workers, cached, best_peer, affinity_prefill, True)
        prefill = _pick(prefill_rows) if uncached >= self.config.local_prefill_threshold else None

        if prefill is None:
            reason = (
                f"local prefill: {uncached} uncached tokens < {self.config.local_prefill_threshold}"
                if uncached < self.config.local_prefill_threshold
                else "local prefill: no prefill worker available"
            )
            rows = _mark(decode_rows, decode.worker_id) + prefill_rows
            claimed = prompt_tokens >= self.config.local_prefill_threshold and decode_cached > 0
            verify_with = _pick(prefill_rows) if claimed else None
            return RouteDecision(
                decode.worker_id, None, decode_cached, reason, rows,
                verify_with=verify_with.worker_id if verify_with else None,
            )  # fmt: skip

        fetch_from, fetch_blocks = self._fetch_source(prefill.worker_id, cached, routable)
        own = cached.get(prefill.worker_id, 0)
        cached_tokens = fetch_blocks * self.config.block_size if fetch_from else own
        reason = f"disaggregated: {uncached} uncached tokens at the decode worker" + (
            f"; prefill fetches {fetch_blocks} blocks from {fetch_from}" if fetch_from else ""
        )
        rows = _mark(decode_rows, decode.worker_id) + _mark(prefill_rows, prefill.worker_id)
        return RouteDecision(
            decode.worker_id, prefill.worker_id, cached_tokens, reason, rows, fetch_from, fetch_blocks
        )

    # -- scoring --------------------------------------------------------------------------------
    def _usable_tokens(self, hit: PrefixHit, prompt_tokens: int) -> int:
        blocks = hit.checkpoint_blocks if self.config.require_checkpoint else hit.blocks
        # At least the last prompt token is always computed: its logits give the first token.
        usable_blocks = min(blocks, (prompt_tokens - 1) // self.config.block_size)
        return usable_blocks * self.config.block_size

    def load_penalty(self, worker: WorkerCandidate) -> float:
        c = self.config
        used = 1.0 - worker.free_pages / worker.total_pages if worker.total_pages > 0 else 0.0
        return (
            c.queued_token_weight * worker.queued_tokens
            + c.running_request_tokens * worker.running_requests
            + c.memory_pressure_tokens * min(max(used, 0.0), 1.0)
        )

    def _score(
        self,
        role: str,
        workers: Sequence[WorkerCandidate],
        cached: Mapping[str, int],
        best_peer: int,
        affinity: str,
        can_fetch: bool,
    ) -> tuple[ScoreRow, ...]:
        c = self.config
        loads = {w.worker_id: self.load_penalty(w) for w in workers}
        least_load = min((loads[w.worker_id] for w in workers if not w.draining), default=0.0)
        rows = []
        for w in workers:
            own = cached.get(w.worker_id, 0)
            gain = best_peer - own if can_fetch and c.fetch_enabled else 0
            fetch = gain if gain >= c.fetch_min_blocks * c.block_size else 0
            within_bound = loads[w.worker_id] - least_load <= c.affinity_max_overload_tokens
            is_affinity = w.worker_id == affinity and within_bound
            bonus = c.affinity_bonus_tokens if is_affinity else 0.0
            note = "affinity over load bound" if w.worker_id == affinity and not within_bound else ""
            score = own + c.fetch_value * fetch - loads[w.worker_id] + bonus
            rows.append(
                ScoreRow(
                    role,
                    w.worker_id,
                    own,
                    fetch,
                    loads[w.worker_id],
                    bonus,
                    score,
                    is_affinity,
                    w.draining,
                    note=note,
                )
            )
        return tuple(rows)

    def _fetch_source(
        self, worker_id: str, cached: Mapping[str, int], routable: set[str]
    ) -> tuple[str | None, int]:
        own = cached.get(worker_id, 0)
        peers = [(t, w) for w, t in cached.items() if w in routable and w != worker_id]
        if not self.config.fetch_enabled or not peers:
            return None, 0
        tokens, holder = max(peers, key=lambda p: (p[0], p[1]))
        if tokens - own < self.config.fetch_min_blocks * self.config.block_size:
            return None, 0
        return holder, tokens // self.config.block_size


def _pick(rows: Sequence[ScoreRow]) -> ScoreRow | None:
    """Highest score; ties go to affinity, then to the lighter load, then to the id (stable)."""
    eligible = [r for r in rows if not r.draining]
    if not eligible:
        return None
    return max(eligible, key=lambda r: (r.score, r.affinity, -r.load_penalty, _neg(r.worker_id)))


def _neg(text: str) -> tuple[int, ...]:
    return tuple(-ord(ch) for ch in text)


def _mark(rows: tuple[ScoreRow, ...], chosen: str) -> tuple[ScoreRow, ...]:
    return tuple(replace(r, chosen=True) if r.worker_id == chosen else r for r in rows)


def _notes(row: ScoreRow) -> str:
    flags = ["chosen" * row.chosen, "affinity" * row.affinity, "draining" * row.draining, row.note]
    return ", ".join(f for f in flags if f)


def _check_unique(*groups: Sequence[WorkerCandidate]) -> None:
    for group in groups:
        ids = [w.worker_id for w in group]
        if len(ids) != len(set(ids)):
            raise ValueError(f"duplicate worker ids among candidates: {ids}")
