"""`python -m prefill_worker`: the prefill worker's entry point. The runtime is `worker/`; this
package only hands `worker.launch` the prefill servicer."""

from __future__ import annotations

from worker.config import worker_config_from_args
from worker.launch import RunningWorker, main, start_worker
from worker.prefill import add_to_server


def run(argv: list[str] | None = None) -> int:
    """The process entry point: serve until SIGTERM, then drain."""
    return main("prefill", add_to_server, argv)


def start(argv: list[str]) -> RunningWorker:
    """Serve in this process (what the Ray actor calls by the name `prefill_worker:start`)."""
    return start_worker(worker_config_from_args("prefill", argv), add_to_server)
