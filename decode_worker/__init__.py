"""`python -m decode_worker`: the decode worker's entry point. The runtime is `worker/`; this
package only hands `worker.launch` the decode servicer."""

from __future__ import annotations

from worker.config import worker_config_from_args
from worker.decode import add_to_server
from worker.launch import RunningWorker, main, start_worker


def run(argv: list[str] | None = None) -> int:
    """The process entry point: serve until SIGTERM, then drain."""
    return main("decode", add_to_server, argv)


def start(argv: list[str]) -> RunningWorker:
    """Serve in this process (what the Ray actor calls by the name `decode_worker:start`)."""
    return start_worker(worker_config_from_args("decode", argv), add_to_server)
