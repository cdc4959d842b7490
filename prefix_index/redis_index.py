"""`RedisPrefixIndex`: the index shared by many routers and workers, kept in Redis.

Every call is one round trip (a Lua script, see `redis_scripts.py`). Short socket timeouts and a
single retry make an unreachable Redis show up fast: lookups raise `IndexUnavailable` so the router
routes by affinity + load. Publishing never raises for that: the client keeps a record of what each
of its workers published (`PublishedRecords`) and, once Redis answers again, republishes a worker's
whole record — after a failed publish, or when a heartbeat finds the lease gone (Redis restarted,
or the lease lapsed and lookups cleaned the entries up).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from prefix_index import redis_scripts
from prefix_index.base import (
    IndexEvent,
    IndexUnavailable,
    PrefixHit,
    PrefixIndex,
    StaleEpoch,
    check_hash,
    check_namespace,
    check_ttl,
    check_worker,
)
from prefix_index.records import PublishedRecords

log = logging.getLogger(__name__)
HASHES_PER_CALL = 16384  # bounds one script's run time when (re)publishing large records
MAX_LOOKUP_WORKERS = 4096  # a lookup considers at most this many workers (Redis may hold fakes)


def pack_hashes(hashes: Sequence[int]) -> bytes:
    try:
        return struct.pack(f">{len(hashes)}Q", *hashes)
    except struct.error:
        for h in hashes:
            check_hash(h)
        raise


class RedisPrefixIndex(PrefixIndex):
    """`url` (redis:// or rediss:// for TLS) and `password` default to BATON_REDIS_URL and
    BATON_REDIS_PASSWORD. `ssl_*` go to redis-py for rediss:// URLs."""

    def __init__(
        self,
        url: str | None = None,
        *,
        password: str | None = None,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        ssl_cert_reqs: str = "required",
        key_prefix: str = "baton",
        connect_timeout_s: float = 0.25,
        socket_timeout_s: float = 2.0,
    ) -> None:
        url = url or os.environ.get("BATON_REDIS_URL")
        if not url or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"RedisPrefixIndex needs a redis:// or rediss:// URL (or BATON_REDIS_URL), got {url!r}"
            )
        options: dict[str, Any] = {
            "password": password or os.environ.get("BATON_REDIS_PASSWORD") or None,
            "socket_connect_timeout": connect_timeout_s,
            "socket_timeout": socket_timeout_s,
            # One immediate retry absorbs a pooled connection that died with a restarted server.
            "retry": Retry(NoBackoff(), 1),
        }
        if url.startswith("rediss://"):
            options.update(
                ssl_ca_certs=ssl_ca_certs,
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
                ssl_cert_reqs=ssl_cert_reqs,
            )
        options = {k: v for k, v in options.items() if v is not None}
        self._client = redis.Redis.from_url(url, **options)
        self._prefix = key_prefix
        self._registry = f"{key_prefix}:epoch"
        self._publish = self._client.register_script(redis_scripts.PUBLISH)
        self._heartbeat = self._client.register_script(redis_scripts.HEARTBEAT)
        self._clear = self._client.register_script(redis_scripts.CLEAR)
        self._lookup = self._client.register_script(redis_scripts.LOOKUP)
        self._lock = threading.Lock()
        self._records = PublishedRecords()
        self._dirty: set[str] = set()  # workers whose record Redis may not reflect

    # -- keys ---------------------------------------------------------------------------------
    def _lease_key(self, worker_id: str) -> str:
        return f"{self._prefix}:lease:{worker_id}"

    # -- worker side --------------------------------------------------------------------------
    def publish(self, worker_id: str, epoch: int, namespace: str, events: Sequence[IndexEvent]) -> bool:
        check_worker(worker_id, epoch)
        check_namespace(namespace)
        with self._lock:
            if not self._records.apply(worker_id, epoch, namespace, events):
                return False
            try:
                with _unavailable_as_error():
                    if worker_id in self._dirty:
                        self._resync(worker_id)
                    else:
                        self._send(worker_id, epoch, [(namespace, e) for e in events])
                return True
            except (IndexUnavailable, StaleEpoch):
                # kept in the record; the next heartbeat (which resets an absurd epoch) resends it
                self._dirty.add(worker_id)
                return False

    def heartbeat(self, worker_id: str, epoch: int, ttl_s: float, max_epoch: int | None = None) -> bool:
        check_worker(worker_id, epoch)
        check_ttl(ttl_s)
        with self._lock, _unavailable_as_error():
            ttl_ms = max(1, int(ttl_s * 1000))
            bound = "" if max_epoch is None else str(max_epoch)
            state = self._heartbeat(args=[self._prefix, worker_id, epoch, ttl_ms, bound])
            if state < 0 or not self._records.renew_epoch(worker_id, epoch):
                raise StaleEpoch(f"worker {worker_id!r}: epoch {epoch} is older than its current one")
            if state == 2:
                log.warning("worker %r: the index held an absurd epoch (beyond %s); reset to %d", worker_id, bound, epoch)
            if state in (0, 2) or worker_id in self._dirty:
                self._resync(worker_id)
            return state == 1

    def clear_worker(self, worker_id: str) -> None:
        check_worker(worker_id)
        with self._lock:
            self._records.clear(worker_id)
            try:
                with _unavailable_as_error():
                    self._clear(args=[self._prefix, worker_id, "1"])
                self._dirty.discard(worker_id)
            except IndexUnavailable:
                self._dirty.add(worker_id)  # its lease lapses meanwhile, so nothing stale matches

    # -- router side --------------------------------------------------------------------------
    def lookup(
        self, namespace: str, block_hashes: Sequence[int], workers: Sequence[str] | None = None
    ) -> dict[str, PrefixHit]:
        check_namespace(namespace)
        if not block_hashes or (workers is not None and not workers):
            return {}
        candidates = list(workers or ())[:MAX_LOOKUP_WORKERS]
        args = [self._prefix, namespace, pack_hashes(block_hashes), MAX_LOOKUP_WORKERS, *candidates]
        with _unavailable_as_error():
            flat = self._lookup(args=args)
        return _parse_hits(flat, len(block_hashes), set(candidates) if workers is not None else None)

    def workers(self) -> dict[str, int]:
        with _unavailable_as_error():
            registry = {w.decode(errors="replace"): e for w, e in self._client.hgetall(self._registry).items()}
            names = sorted(registry)
            leases = self._client.mget([self._lease_key(w) for w in names]) if names else []
        return {
            w: int(registry[w])
            for w, lease in zip(names, leases, strict=True)
            if lease is not None and lease == registry[w] and registry[w].isdigit()
        }

    def close(self) -> None:
        self._client.close()

    # -- internals ----------------------------------------------------------------------------
    def _send(self, worker_id: str, epoch: int, events: list[tuple[str, IndexEvent]]) -> None:
        """All events in one pipelined round trip, split into bounded script calls."""
        pipe = self._client.pipeline(transaction=False)
        for namespace, args in _script_batches(events):
            self._publish(args=[self._prefix, worker_id, epoch, namespace, *args], client=pipe)
        if any(r == 0 for r in pipe.execute()):
            raise StaleEpoch(f"worker {worker_id!r}: epoch {epoch} is older than its current one")

    def _resync(self, worker_id: str) -> None:
        """Make Redis hold exactly this client's record of the worker."""
        self._clear(args=[self._prefix, worker_id, "0"])
        record = self._records.get(worker_id)
        if record is not None:
            self._send(worker_id, record.epoch, list(record.as_events()))
        self._dirty.discard(worker_id)


def _script_batches(events: list[tuple[str, IndexEvent]]) -> Iterator[tuple[str, list[Any]]]:
    """(namespace, flat script args) per call: events of one namespace, at most ~HASHES_PER_CALL."""
    namespace, args, size = None, [], 0
    for ns, event in events:
        kind = "s" if event.kind == "stored" else "r"
        for start in range(0, max(1, len(event.block_hashes), len(event.checkpoint_hashes)), HASHES_PER_CALL):
            blocks = event.block_hashes[start : start + HASHES_PER_CALL]
            checkpoints = event.checkpoint_hashes[start : start + HASHES_PER_CALL]
            if args and (ns != namespace or size + len(blocks) + len(checkpoints) > HASHES_PER_CALL):
                yield namespace, args
                args, size = [], 0
            namespace = ns
            args += [kind, pack_hashes(blocks), pack_hashes(checkpoints)]
            size += len(blocks) + len(checkpoints)
    if args:
        yield namespace, args


def _parse_hits(flat: Any, num_blocks: int, candidates: set[str] | None) -> dict[str, PrefixHit]:
    """The script's flat reply, validated: a malformed reply is a fault (IndexUnavailable), and a
    worker that was not asked about or a count beyond the prompt is dropped."""
    if not isinstance(flat, list) or len(flat) % 3:
        raise IndexUnavailable(f"redis prefix index returned a malformed lookup reply ({type(flat).__name__})")
    hits = {}
    for raw, blocks, ckpt in zip(flat[0::3], flat[1::3], flat[2::3], strict=True):
        if not isinstance(raw, bytes) or not isinstance(blocks, int) or not isinstance(ckpt, int):
            raise IndexUnavailable("redis prefix index returned a malformed lookup row")
        worker = raw.decode(errors="replace")
        if (candidates is not None and worker not in candidates) or not 0 <= ckpt <= blocks <= num_blocks:
            continue
        hits[worker] = PrefixHit(worker, blocks, ckpt)
    return hits


@contextlib.contextmanager
def _unavailable_as_error() -> Iterator[None]:
    """Every Redis failure (unreachable, a key of the wrong type, a script error) is IndexUnavailable:
    the router routes by affinity + load, a worker keeps its record and resends it later."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError) as exc:
        raise IndexUnavailable(f"redis prefix index unreachable: {exc}") from exc
    except redis.RedisError as exc:
        raise IndexUnavailable(f"redis prefix index error: {type(exc).__name__}: {exc}") from exc
