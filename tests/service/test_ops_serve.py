"""`baton serve` as an operator meets it, with the default listen hosts (ports made free so tests can
run side by side): every socket of the process tree is bound to loopback, the admin API is refused
on the public port, logs are JSON lines, and the Grafana dashboard's every query names a metric
that the live router or workers export, after a short session whose TTFT histogram (vLLM's name)
counts exactly the requests made."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from baton.cli import build_parser
from baton_pb.v1 import admin_pb2, admin_pb2_grpc, common_pb2, public_pb2, public_pb2_grpc
from tests.helpers.listening import is_loopback, listening_addresses
from tests.helpers.promql import metric_names, sample_names

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "baton-dashboard.json"
REQUESTS = 3


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _host(listen: str) -> str:
    return listen.rpartition(":")[0]


class Served:
    def __init__(self, process: subprocess.Popen, lines: list[str], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        fields = {line.split()[0]: line.split() for line in lines}
        self.router = fields["router"][1]
        self.admin = fields["admin"][1]
        self.router_metrics = fields["metrics"][1]
        self.workers = [line.split() for line in lines if line.split()[0] in ("prefill", "decode")]
        self.worker_metrics = [parts[parts.index("metrics") + 1] for parts in self.workers if "metrics" in parts]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from tests.helpers.checkpoints import tiny_checkpoint

    defaults = build_parser().parse_args(["serve", "--model", "unused"])
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [
        sys.executable, "-m", "baton", "serve", "--model", str(tiny_checkpoint()), "--pool", "process",
        "--memory-gb", "0.05",
        # the default hosts, with free ports instead of the fixed default ones
        "--listen", f"{_host(defaults.listen)}:0", "--admin-listen", f"{_host(defaults.admin_listen)}:0",
        "--metrics-port", str(_free_port()),
    ]  # fmt: skip
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file, text=True, cwd=REPO)
    lines: list[str] = []
    try:
        while not lines or lines[-1] != "Ctrl-C to stop.":
            line = process.stdout.readline()
            assert line, f"baton serve exited early ({process.wait()}): {log_path.read_text()[-2000:]}"
            lines.append(line.strip())
        yield Served(process, lines, log_path)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(90)


def test_every_listener_is_on_loopback_by_default(served):
    defaults = build_parser().parse_args(["serve", "--model", "unused"])
    assert _host(defaults.listen) == "127.0.0.1" and _host(defaults.admin_listen) == "127.0.0.1"
    bound = listening_addresses(served.process.pid)
    ports = {port for _, port in bound}
    expected = {served.router, served.admin, served.router_metrics, *served.worker_metrics}
    expected |= {parts[2] for parts in served.workers}
    assert {int(address.rpartition(":")[2]) for address in expected} <= ports
    assert len(served.worker_metrics) == 2, "worker metrics are on under baton serve"
    assert bound and all(is_loopback(ip) for ip, _ in bound), bound


def test_admin_rpcs_are_refused_on_the_public_listener(served):
    with grpc.insecure_channel(served.router) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            admin_pb2_grpc.BatonAdminStub(channel).ListWorkers(admin_pb2.ListWorkersRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as refused:
            admin_pb2_grpc.BatonAdminStub(channel).Scale(admin_pb2.ScaleRequest(prefill=0, decode=1), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with grpc.insecure_channel(served.admin) as channel:
        workers = admin_pb2_grpc.BatonAdminStub(channel).ListWorkers(admin_pb2.ListWorkersRequest(), timeout=10).workers
    assert sorted((w.role, w.state) for w in workers) == [("decode", "ready"), ("prefill", "ready")]
    assert all(w.worker_id and w.metrics_port for w in workers)


def _scrape(host_port: str) -> str:
    with urllib.request.urlopen(f"http://{host_port}/metrics", timeout=10) as response:
        return response.read().decode()


def _ttft_count(exposition: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "vllm:time_to_first_token_seconds_count"
    )


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":  # label_values(METRIC, LABEL)
            queries.append(variable["query"].split("(", 1)[1].split(",", 1)[0])
    return queries


def test_dashboard_queries_exist_in_live_metrics_and_ttft_counts_requests(served):
    before = _ttft_count(_scrape(served.router_metrics))
    with grpc.insecure_channel(served.router) as channel:
        stub = public_pb2_grpc.BatonStub(channel)
        for turn in range(REQUESTS):
            request = public_pb2.GenerateRequest(
                session_id="ops", text=f"turn {turn}: hello",
                sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=4),
            )  # fmt: skip
            assert list(stub.Generate(request, timeout=120))
    exposition = _scrape(served.router_metrics)
    assert _ttft_count(exposition) - before == REQUESTS
    live = sample_names(exposition)
    for address in served.worker_metrics:
        live |= sample_names(_scrape(address))
    wanted = {name for query in _dashboard_queries() for name in metric_names(query)}
    assert wanted, "the dashboard has queries"
    assert wanted - live == set(), f"dashboard metrics missing from live /metrics: {sorted(wanted - live)}"
    panels = {panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]}
    for needed in ("Time to first token", "Inter-token latency", "KV cache usage", "Prefix cache hit rate",
                   "Transfer bytes per second", "fetched from peers vs recomputed", "Failovers and admission"):  # fmt: skip
        assert any(needed in title for title in panels), needed


def test_serve_logs_are_json_lines_with_request_ids(served):
    time.sleep(0.5)  # let the last request's lines reach the file
    lines = [line for line in served.log_path.read_text().splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
