"""What both worker kinds are made of: one engine (owned by an `EngineLoop` thread), one transfer
backend registered on the engine's cache tensors, a KV event hub, admission control and drain."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from baton_pb.v1 import admin_pb2
from engine.engine_args import effective_options
from engine.llm_engine import LLMEngine
from kvtransfer.factory import create_backend
from rpc.errors import AdmissionRejected
from worker.config import WorkerConfig
from worker.engine_loop import EngineLoop
from worker.exposed import ExposedPrefixes
from worker.kv_events import KvEventHub
from worker.rank_transfers import RankTransfers, StagingSize, follower_hooks_factory
from worker.ranks import start_ranks
from worker.shard_transfer import ShardedTransfers

log = logging.getLogger(__name__)


def build_engine(config: WorkerConfig, on_kv_event):
    if config.engine.parallel.world_size == 1:
        return LLMEngine(config.model, config.engine, on_kv_event=on_kv_event), None
    if config.transfer == "local":
        raise ValueError("--transfer local cannot reach the other ranks' processes: use tcp or ucx with --tp/--ep > 1")
    handlers = follower_hooks_factory(config.transfer, staging_size(config))
    return start_ranks(config.model, config.engine, on_kv_event, handlers)


def staging_size(config: WorkerConfig) -> StagingSize:
    return StagingSize(config.reshard_staging_tokens, config.reshard_staging_slots)


def _checkpoint_files(model_dir: Path) -> tuple[int, int]:
    """(number, total bytes) of the checkpoint's weight files: the scale of the load ahead."""
    files = [p for p in model_dir.glob("*.safetensors") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


class WorkerCore:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.epoch = time.time_ns() // 1_000_000
        # The hub's namespace is the model identity, known once the engine has loaded the weights;
        # the engine emits no event before its first step.
        started = time.perf_counter()
        files, size = _checkpoint_files(Path(config.model))
        log.info("loading model %s: %d weight files, %.2f GB", config.model, files, size / 1e9)
        self.engine, self.ranks = build_engine(config, lambda event: self.hub.on_engine_event(event))
        self.model_id = self.engine.model_id
        log.info("model %s loaded in %.1f s", self.model_id, time.perf_counter() - started)
        self.hub = KvEventHub(config.worker_id, self.epoch, namespace=self.model_id)
        self.loop = EngineLoop(self.engine, name=f"engine-{config.worker_id}").start()
        self.backend = create_backend(config.transfer)
        # registers the cache with the backend; rank 0's part of transfers with several ranks or
        # with a peer of another TP degree (`self.shards`)
        rank0 = RankTransfers(
            self.backend, self.engine.cache.regions(), self.engine.model_config, config.engine.tp, 0,
            staging_size(config), config.block_size,
        )  # fmt: skip
        self.shards = ShardedTransfers(self.loop, rank0)
        self.draining = threading.Event()
        self.exposed = ExposedPrefixes()  # prefixes peers may read from us (worker/prefix_fetch.py)
        self._lock = threading.Lock()
        self._in_flight = 0
        self.counters = {
            "computed_tokens": 0,
            "fetched_tokens": 0,
            "fetch_failures": 0,
            "transfer_bytes": 0,
            "transfer_seconds": 0.0,
            "admission_rejections": 0,
            "requests_ok": 0,
            "requests_error": 0,
        }
        self.publisher = None
        self.metrics_port = 0  # set by worker.launch once /metrics is served

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        with self._lock:
            if self.draining.is_set():
                raise AdmissionRejected(f"worker {self.config.worker_id} is draining", draining=True)
            if self._in_flight >= self.config.max_queue:
                self.counters["admission_rejections"] += 1
                raise AdmissionRejected(
                    f"worker {self.config.worker_id} is full ({self._in_flight} requests in flight)"
                )
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def count(self, name: str, amount: float) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + amount

    def worker_info(self) -> admin_pb2.WorkerInfo:
        metrics = self.loop.call(lambda engine: engine.metrics(), timeout_s=10)
        load = admin_pb2.WorkerLoad(
            running_requests=int(metrics["num_running"]),
            waiting_requests=int(metrics["num_waiting"]),
            queued_tokens=int(metrics.get("queued_tokens", 0)),
            free_pages=int(metrics["pages_free"]),
            total_pages=int(metrics["pages_total"]),
            free_slots=int(metrics["slots_free"]),
            total_slots=int(metrics["slots_total"]),
            cached_blocks=int(metrics.get("cached_pages", 0)),
            checkpoints=int(metrics.get("checkpoints", 0)),
            hit_rate=float(metrics.get("hit_rate", 0.0)),
            prompt_tokens=int(metrics.get("prompt_tokens", 0)),
            cached_tokens=int(metrics.get("cached_tokens", 0)),
            computed_tokens=self.counters["computed_tokens"],
            fetched_tokens=self.counters["fetched_tokens"],
            spec_drafted=int(metrics.get("spec_drafted", 0)),
            spec_accepted=int(metrics.get("spec_accepted", 0)),
            # reservations waiting for their transfer + prefill results pinned until shipped
            pending_transfers=int(metrics.get("num_reserved", 0)) + int(metrics.get("num_pinned", 0)),
        )
        return admin_pb2.WorkerInfo(
            worker_id=self.config.worker_id,
            role=self.config.role,
            address=self.config.address,
            epoch=self.epoch,
            draining=self.draining.is_set(),
            healthy=self.loop.last_error is None,
            load=load,
            model_identity=self.model_id,
            metrics_port=self.metrics_port,
            engine_config_json=json.dumps(effective_options(self.engine.config), sort_keys=True),
        )

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.in_flight == 0

    def close(self) -> None:
        self.hub.close()
        self.loop.stop()
        if self.ranks is not None:
            self.ranks.stop(self.engine)
        with contextlib.suppress(Exception):
            self.backend.close()
