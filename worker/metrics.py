"""Prometheus `/metrics` of a worker. A worker's metrics are read from its engine and
counters at scrape time (a custom collector), so the hot path only bumps plain integers."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from rpc import metrics_http


class WorkerCollector:
    def __init__(self, running_worker) -> None:
        self.worker = running_worker

    def collect(self):
        core = self.worker.core
        labels = {"worker_id": core.config.worker_id, "role": core.config.role}
        try:
            info = core.worker_info()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the engine is busy
            return
        load = info.load
        gauges = {
            "baton_worker_running_requests": load.running_requests,
            "baton_worker_waiting_requests": load.waiting_requests,
            "baton_worker_queue_depth": core.in_flight,
            "baton_worker_pages_used": load.total_pages - load.free_pages,
            "baton_worker_pages_total": load.total_pages,
            "baton_worker_slots_used": load.total_slots - load.free_slots,
            "baton_worker_checkpoints": load.checkpoints,
            "baton_worker_cached_blocks": load.cached_blocks,
            "baton_worker_hit_rate": load.hit_rate,
            "baton_worker_pending_transfers": load.pending_transfers,
        }
        for name, value in gauges.items():
            family = GaugeMetricFamily(name, name.replace("_", " "), labels=list(labels))
            family.add_metric(list(labels.values()), float(value))
            yield family
        counters = {
            "baton_worker_prompt_tokens": load.prompt_tokens,
            "baton_worker_cached_tokens": load.cached_tokens,
            **{f"baton_worker_{name}": value for name, value in core.counters.items()},
        }
        for name, value in counters.items():
            family = CounterMetricFamily(name, name.replace("_", " "), labels=list(labels))
            family.add_metric(list(labels.values()), float(value))
            yield family


def serve_worker_metrics(port: int, *, worker) -> int:
    """Serves the worker's /metrics on `port` (0 = any free port); returns the bound port."""
    return metrics_http.start_metrics_server(port, collector=WorkerCollector(worker))
