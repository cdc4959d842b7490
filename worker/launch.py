"""Starting a worker process (`python -m prefill_worker` / `python -m decode_worker`) or an
in-process worker (Ray actors, tests): gRPC server + engine + transfer backend, SIGTERM drains.
The role's entry point hands in its servicer, so this module imports neither role."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry

from baton_pb.v1 import worker_pb2_grpc
from rpc import grpc_server
from rpc.cluster_auth import ClusterAuthInterceptor
from rpc.listen import check_exposure, dial_host
from rpc.logs import configure_logging
from rpc.metrics_http import MetricsServer, serve_metrics
from rpc.signals import wait_in_main_thread
from worker.config import METRICS_ANY_PORT, Role, WorkerConfig, worker_config_from_args
from worker.control import WorkerControlServicer
from worker.core import WorkerCore
from worker.index_publisher import IndexPublisher
from worker.metrics import WorkerCollector
from worker.model_check import STARTUP_ERRORS, check_model_dir

log = logging.getLogger(__name__)
AddRoleServicer = Callable[[WorkerCore, grpc.Server], None]  # registers a role's servicer on the server
DRAIN_TIMEOUT_S = 120.0
SERVICE_NAMES = {
    "prefill": ("baton.v1.WorkerControl", "baton.v1.PrefillService"),
    "decode": ("baton.v1.WorkerControl", "baton.v1.DecodeService"),
}


@dataclass
class RunningWorker:
    config: WorkerConfig
    core: WorkerCore
    server: grpc.Server
    health: object
    address: str
    stopped: threading.Event = field(default_factory=threading.Event)
    metrics_server: MetricsServer | None = None

    def drain_and_stop(self, timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
        """Stop taking requests, finish running ones, leave the index, stop. True if drained."""
        self.core.draining.set()
        grpc_server.set_not_serving(self.health, SERVICE_NAMES[self.config.role])
        drained = self.core.wait_idle(timeout_s)
        if self.core.publisher is not None:
            self.core.publisher.leave()
        self.stop(grace_s=1.0)
        return drained

    def stop(self, grace_s: float = 0.5) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        self.server.stop(grace_s).wait(grace_s + 1)
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.core.close()


def start_worker(config: WorkerConfig, add_role_servicer: AddRoleServicer) -> RunningWorker:
    """Serve one worker in this process; `add_role_servicer` registers the role's servicer (given by
    the role's entry point, `prefill_worker` or `decode_worker`, so this module imports neither).
    The gRPC and metrics ports are bound (and held) before the model loads, so a taken port fails
    at once, naming the address."""
    what = f"{config.role} worker"
    guard = ClusterAuthInterceptor(config.cluster, mutual_tls=config.tls.mutual)
    check_exposure(config.listen, authenticated=guard.enforced, insecure=config.insecure, what=what)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max(32, 2 * config.max_queue + 16), thread_name_prefix="rpc"),
        options=grpc_server.SERVER_OPTIONS,
        interceptors=[guard],
    )
    port = grpc_server.bind(server, config.listen, config.tls, what)
    if not guard.enforced:
        log.warning(
            "worker RPCs are open to anyone who can reach %s: set BATON_CLUSTER_TOKEN "
            "(or --cluster-token-file) or mutual TLS with internal certificates",
            config.listen,
        )
    collector = WorkerCollector(None)
    metrics_server = None
    try:
        if config.metrics_port:
            metrics_port = 0 if config.metrics_port == METRICS_ANY_PORT else config.metrics_port
            registry = CollectorRegistry()
            registry.register(collector)
            metrics_server = serve_metrics(config.listen_host or "0.0.0.0", metrics_port, registry=registry)
        core = WorkerCore(config)  # loads the model: the long part of a start
    except BaseException:
        server.stop(0)
        if metrics_server is not None:
            metrics_server.close()
        raise
    core.metrics_port = metrics_server.port if metrics_server else 0
    worker_pb2_grpc.add_WorkerControlServicer_to_server(WorkerControlServicer(core), server)
    add_role_servicer(core, server)
    health = grpc_server.add_health_and_reflection(server, SERVICE_NAMES[config.role])
    server.start()
    host = dial_host(config.listen_host)
    address = config.advertise or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    running = RunningWorker(config, core, server, health, address, metrics_server=metrics_server)
    collector.worker = running
    core.config = _with_address(config, address)
    _start_index_publisher(running)
    if config.ready_file:
        _write_atomically(Path(config.ready_file), address)
    log.info("%s worker %s serving on %s (metrics port %s)", config.role, config.worker_id, address, core.metrics_port or "off")
    return running


def _with_address(config: WorkerConfig, address: str) -> WorkerConfig:
    return replace(config, advertise=address)


def _start_index_publisher(running: RunningWorker) -> None:
    spec = running.config.index
    if spec and spec != "embedded":
        running.core.publisher = IndexPublisher(spec, running.core, key_prefix=running.config.redis_key_prefix).start()


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(role: Role, add_role_servicer: AddRoleServicer, argv: list[str] | None = None) -> int:
    configure_logging()
    config = worker_config_from_args(role, argv)
    try:
        check_model_dir(config.model)
        running = start_worker(config, add_role_servicer)
    except STARTUP_ERRORS as error:
        # One line, no traceback: the operator's input (model, address) is wrong, not the code.
        log.error("%s worker cannot start: %s", role, error)
        return 2
    done = threading.Event()

    def on_sigterm(signum, frame):  # drain in a thread: signal handlers must return quickly
        threading.Thread(target=lambda: (running.drain_and_stop(), done.set()), daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    wait_in_main_thread(done)
    log.info("worker %s stopped", config.worker_id)
    return 0
