"""Prometheus `/metrics` of a worker. A worker's metrics are read from its engine and
counters at scrape time (a custom collector), so the hot path only bumps plain integers.

Baton's own names (`baton_worker_*`, labels worker_id and role) and, for the engine-level
quantities SREs already watch on vLLM, vLLM's names and units with a `model_name` label: running and
waiting requests, KV cache usage (a 0-1 fraction), prefix-cache queries and hits (in tokens).
Transfer bytes and seconds carry the backend (tcp, ucx, local).
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

TRANSFER_COUNTERS = ("transfer_bytes", "transfer_seconds")


def _family(kind, name: str, help_text: str, labels: dict[str, str], value: float):
    family = kind(name, help_text, labels=list(labels))
    family.add_metric(list(labels.values()), float(value))
    return family


class WorkerCollector:
    def __init__(self, running_worker) -> None:
        self.worker = running_worker

    def collect(self):
        if self.worker is None:  # bound before the model loaded; nothing to report yet
            return
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
            yield _family(GaugeMetricFamily, name, name.replace("_", " "), labels, value)
        counters = {
            "baton_worker_prompt_tokens": load.prompt_tokens,
            "baton_worker_cached_tokens": load.cached_tokens,
            **{f"baton_worker_{n}": v for n, v in core.counters.items() if n not in TRANSFER_COUNTERS},
        }
        for name, value in counters.items():
            yield _family(CounterMetricFamily, name, name.replace("_", " "), labels, value)
        transfer = labels | {"backend": core.config.transfer}
        yield _family(CounterMetricFamily, "baton_worker_transfer_bytes", "KV + state bytes sent to decode workers", transfer, core.counters.get("transfer_bytes", 0))
        yield _family(CounterMetricFamily, "baton_worker_transfer_seconds", "Wall seconds of transfers to decode workers (overlapping compute)", transfer, core.counters.get("transfer_seconds", 0.0))
        yield from self._vllm(core, load, labels)

    @staticmethod
    def _vllm(core, load, labels: dict[str, str]):
        """vLLM's names (https://docs.vllm.ai/en/stable/usage/metrics/) for the same quantities."""
        vllm_labels = {"model_name": core.model_id} | labels
        usage = (load.total_pages - load.free_pages) / load.total_pages if load.total_pages else 0.0
        yield _family(GaugeMetricFamily, "vllm:num_requests_running", "Number of requests in model execution batches.", vllm_labels, load.running_requests)
        yield _family(GaugeMetricFamily, "vllm:num_requests_waiting", "Number of requests waiting to be processed.", vllm_labels, load.waiting_requests)
        yield _family(GaugeMetricFamily, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", vllm_labels, usage)
        yield _family(CounterMetricFamily, "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.", vllm_labels, load.prompt_tokens)
        yield _family(CounterMetricFamily, "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", vllm_labels, load.cached_tokens)

