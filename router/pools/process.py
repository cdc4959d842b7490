"""`ProcessPool`: each worker a local subprocess (`python -m prefill_worker ...`), the embedded
default of `baton serve` and what the end-to-end tests use.

Start: launch in parallel, wait for each `--ready-file` (the worker writes its bound address there
once its gRPC server runs), then for gRPC health SERVING. A worker that exits early fails the start
with the tail of its log. Remove: SIGTERM (the worker drains, exits 0), then SIGKILL after a timeout.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from router.pools.base import PoolMember, Role, WorkerSpec, WorkerStartError
from router.pools.health import wait_until_serving
from router.pools.launching import LaunchingPool

log = logging.getLogger(__name__)
LOG_TAIL_BYTES = 4000
STARTUP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0

WorkerCommand = Callable[[Role], list[str]]


def default_worker_command(role: Role) -> list[str]:
    return [sys.executable, "-m", f"{role}_worker"]


@dataclass
class _Worker:
    worker_id: str
    role: Role
    process: subprocess.Popen
    ready_file: Path
    log_file: Path
    address: str = ""

    def member(self) -> PoolMember:
        return PoolMember(self.address, self.role, self.worker_id)

    def log_tail(self) -> str:
        try:
            data = self.log_file.read_bytes()[-LOG_TAIL_BYTES:]
        except OSError:
            return "(no log)"
        return data.decode(errors="replace")

    def exit_reason(self) -> str | None:
        code = self.process.poll()
        if code is None:
            return None
        return f"worker {self.worker_id} exited with code {code} during startup; log tail:\n{self.log_tail()}"


def _read_address(ready_file: Path) -> str:
    try:
        return ready_file.read_text().strip()
    except FileNotFoundError:
        return ""


class ProcessPool(LaunchingPool[_Worker]):
    def __init__(
        self,
        spec: WorkerSpec,
        *,
        command: WorkerCommand = default_worker_command,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self._command = command
        self._startup_timeout_s = startup_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._env = {**os.environ, **spec.env(), **(env or {})}
        self._dir = Path(tempfile.mkdtemp(prefix="baton-pool-"))
        atexit.register(self.close)

    # ---- Pool ------------------------------------------------------------------------------------
    def members(self) -> list[PoolMember]:
        with self._lock:
            workers = list(self._workers.values())
        # A worker whose process is gone (crashed, killed) is not a member any more.
        return [w.member() for w in workers if w.process.poll() is None]

    # ---- extras ----------------------------------------------------------------------------------
    def process(self, worker_id: str) -> subprocess.Popen:
        """The worker's process (chaos tests SIGKILL it)."""
        return self._worker(worker_id).process

    # ---- internals -------------------------------------------------------------------------------
    def _launch(self, role: Role) -> _Worker:
        worker_id = self._new_worker_id(role)
        ready_file = self._dir / f"{worker_id}.ready"
        log_file = self._dir / f"{worker_id}.log"
        argv = self._command(role) + self.spec.argv(worker_id, role=role, ready_file=str(ready_file))
        with open(log_file, "wb") as log_handle:
            # Own session: Ctrl-C at the terminal reaches `baton serve`, which stops the router
            # before the workers, instead of every process at once.
            process = subprocess.Popen(
                argv, stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._env, start_new_session=True,
            )  # fmt: skip
        log.info("started %s (pid %d): %s", worker_id, process.pid, " ".join(argv))
        return _Worker(worker_id, role, process, ready_file, log_file)

    def _wait_ready(self, worker: _Worker) -> None:
        deadline = time.monotonic() + self._startup_timeout_s
        while not (address := _read_address(worker.ready_file)):
            reason = worker.exit_reason()
            if reason:
                raise WorkerStartError(reason)
            if time.monotonic() >= deadline:
                raise WorkerStartError(
                    f"worker {worker.worker_id} was not serving after {self._startup_timeout_s:g} s "
                    "(raise --startup-timeout for large models); "
                    f"log tail:\n{worker.log_tail()}"
                )
            time.sleep(0.05)
        worker.address = address
        wait_until_serving(worker.address, max(1.0, deadline - time.monotonic()), failure=worker.exit_reason)

    def _after_close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
        atexit.unregister(self.close)

    def _discard(self, worker: _Worker) -> None:
        self._terminate(worker)

    def _stop(self, worker: _Worker) -> None:
        self._terminate(worker)

    def _terminate(self, worker: _Worker) -> None:
        process = worker.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "worker %s did not stop in %.0f s; killing it", worker.worker_id, self._stop_timeout_s
                )
                process.kill()
                process.wait()
        log.info("worker %s stopped (exit code %s)", worker.worker_id, process.returncode)
