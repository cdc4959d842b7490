"""A stand-in worker for pool tests: the real worker's flags, ready file, gRPC health and
`WorkerControl.GetLoad`, SIGTERM → drain → exit 0 — and no engine. It tests the *pool* (process
lifecycle, readiness, scaling, kill), not the worker.

    python tests/router/fake_worker.py prefill --model DIR --listen 127.0.0.1:0 --ready-file F ...
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

# Run as a script: make the repository importable whatever the editable install maps.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from baton_pb.v1 import admin_pb2, worker_pb2_grpc  # noqa: E402
from engine.identity import CheckpointFilesError, model_identity  # noqa: E402
from rpc import grpc_server  # noqa: E402
from worker.config import WorkerConfig, worker_config_from_args  # noqa: E402

SERVICE_NAMES = ("baton.v1.WorkerControl",)


class _Control(worker_pb2_grpc.WorkerControlServicer):
    def __init__(self, running: FakeRunningWorker) -> None:
        self.running = running

    def GetLoad(self, request, context):
        r = self.running
        return admin_pb2.WorkerInfo(
            worker_id=r.config.worker_id, role=r.config.role, address=r.address, epoch=r.epoch,
            draining=r.draining.is_set(), healthy=True, load=admin_pb2.WorkerLoad(total_pages=os.getpid()),
            model_identity=_identity(r.config.model),
        )  # fmt: skip


def _identity(model: str) -> str:
    """The real identity when the folder holds a checkpoint (pool tests pass an empty folder)."""
    try:
        return model_identity(model)
    except CheckpointFilesError:
        return ""


@dataclass
class FakeRunningWorker:
    config: WorkerConfig
    address: str = ""
    epoch: int = field(default_factory=lambda: time.time_ns())
    draining: threading.Event = field(default_factory=threading.Event)
    server: grpc.Server | None = None
    health: object = None

    def drain_and_stop(self, timeout_s: float = 10.0) -> bool:
        self.draining.set()
        grpc_server.set_not_serving(self.health, SERVICE_NAMES)
        self.stop()
        return True

    def stop(self, grace_s: float = 0.2) -> None:
        if self.server is not None:
            self.server.stop(grace_s).wait(grace_s + 1)


def start_fake_worker(config: WorkerConfig) -> FakeRunningWorker:
    if not Path(config.model).is_dir():
        raise FileNotFoundError(f"model directory {config.model} does not exist")
    running = FakeRunningWorker(config)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    worker_pb2_grpc.add_WorkerControlServicer_to_server(_Control(running), server)
    running.health = grpc_server.add_health_and_reflection(server, SERVICE_NAMES)
    port = grpc_server.bind(server, config.listen, config.tls)
    server.start()
    running.server = server
    running.address = config.advertise or f"127.0.0.1:{port}"
    if config.ready_file:
        tmp = Path(config.ready_file + ".tmp")
        tmp.write_text(running.address)
        os.replace(tmp, config.ready_file)  # atomically, as worker.launch does
    return running


def start_fake_prefill(argv: list[str]) -> FakeRunningWorker:
    return start_fake_worker(worker_config_from_args("prefill", argv))


def start_fake_decode(argv: list[str]) -> FakeRunningWorker:
    return start_fake_worker(worker_config_from_args("decode", argv))


def main(argv: list[str]) -> int:
    role, flags = argv[0], argv[1:]
    # Misbehaviours the pool must cope with, chosen by the test through the environment.
    time.sleep(float(os.environ.get("FAKE_WORKER_STARTUP_DELAY_S", "0")))
    running = start_fake_worker(worker_config_from_args(role, flags))
    done = threading.Event()
    if os.environ.get("FAKE_WORKER_IGNORE_SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: (running.drain_and_stop(), done.set()))
    done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
