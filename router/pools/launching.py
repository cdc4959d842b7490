"""`LaunchingPool`: the lifecycle shared by the pools that start their own workers (`ProcessPool`,
`RayPool`). Start launches all workers at once and waits for each; a worker joins the members only
once ready, and one that fails to start is discarded. Remove and close stop workers gracefully
(drain, then kill). A subclass says how to launch, wait for, discard and stop one worker."""

from __future__ import annotations

import abc
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, Protocol, TypeVar

from router.pools.base import Pool, PoolError, PoolMember, Role, check_role


class LaunchedWorker(Protocol):
    worker_id: str
    address: str

    def member(self) -> PoolMember: ...


W = TypeVar("W", bound=LaunchedWorker)


class LaunchingPool(Pool, Generic[W]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workers: dict[str, W] = {}  # by worker id; only started (ready) workers
        self._starting: dict[str, W] = {}  # launched, not ready yet
        self._counter = itertools.count()
        self._closed = False

    # ---- what a subclass provides ----------------------------------------------------------------
    @abc.abstractmethod
    def _launch(self, role: Role) -> W:
        """Start one worker (do not wait for it)."""

    @abc.abstractmethod
    def _wait_ready(self, worker: W) -> None:
        """Return once the worker serves; raise WorkerStartError if it cannot."""

    @abc.abstractmethod
    def _discard(self, worker: W) -> None:
        """Stop a worker that failed to start (or whose batch failed)."""

    @abc.abstractmethod
    def _stop(self, worker: W) -> None:
        """Stop a member: graceful stop, then kill."""

    def _after_close(self) -> None:
        """Release what the pool itself holds, once every worker is stopped."""

    # ---- Pool ------------------------------------------------------------------------------------
    def start(self, prefill: int, decode: int) -> None:
        roles: list[Role] = ["prefill"] * prefill + ["decode"] * decode
        launched = [self._launch(role) for role in roles]  # all at once: model loads overlap
        try:
            with ThreadPoolExecutor(max_workers=max(1, len(launched))) as executor:
                list(executor.map(self._await_ready, launched))
        except BaseException:
            for worker in launched:
                self._discard(worker)
            raise
        with self._lock:
            self._workers.update({w.worker_id: w for w in launched})

    def add(self, role: Role) -> PoolMember:
        worker = self._launch(check_role(role))
        try:
            self._await_ready(worker)
        except BaseException:
            self._discard(worker)
            raise
        with self._lock:
            self._workers[worker.worker_id] = worker
        return worker.member()

    def starting(self) -> list[PoolMember]:
        with self._lock:
            return [w.member() for w in self._starting.values()]

    def remove(self, key: str) -> None:
        with self._lock:
            worker = next((w for w in self._workers.values() if key in (w.worker_id, w.address)), None)
            if worker is None:
                raise PoolError(f"no worker {key!r} in this pool")
            del self._workers[worker.worker_id]
        self._stop(worker)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers.values())
            self._workers.clear()
        with ThreadPoolExecutor(max_workers=max(1, len(workers))) as executor:
            list(executor.map(self._stop, workers))
        self._after_close()

    def _await_ready(self, worker: W) -> None:
        """`_wait_ready`, with the worker listed as starting meanwhile (`baton workers`: loading)."""
        with self._lock:
            self._starting[worker.worker_id] = worker
        try:
            self._wait_ready(worker)
        finally:
            with self._lock:
                self._starting.pop(worker.worker_id, None)

    # ---- for subclasses --------------------------------------------------------------------------
    def _new_worker_id(self, role: Role) -> str:
        if self._closed:
            raise PoolError("pool is closed")
        return f"{role}-{next(self._counter)}"

    def _worker(self, worker_id: str) -> W:
        with self._lock:
            if worker_id not in self._workers:
                raise PoolError(f"no worker {worker_id!r} in this pool")
            return self._workers[worker_id]
