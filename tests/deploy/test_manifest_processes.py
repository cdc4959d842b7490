"""Start router + 1 prefill + 1 decode + Redis locally with exactly the command, args and env of the
cpu-dev manifests, then run the checks the kubelet's probes run (grpc.health.v1 Check, service "")
and end each server the way Kubernetes does (SIGTERM after preStop) expecting a drained exit 0.

Only addresses, ports and paths differ from the cluster; `tests/deploy/manifest_commands.py`
documents the mapping (0.0.0.0 / Service names -> 127.0.0.1 with free ports, MODEL_DIR -> a tiny
local checkpoint, POD_IP -> 127.0.0.1, POD_NAME -> a local name, Redis --dir -> a temp dir).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.deploy.manifest_commands import ProcessSpec, local_argv, local_env, process_specs

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

SERVICE_MODULES = ("router.__main__", "prefill_worker.__main__", "decode_worker.__main__")
START_ORDER = (
    "redis",
    "prefill",
    "decode",
    "router",
)  # Kubernetes starts them at once; order only speeds this up
HEALTHY_WITHIN_S = 180.0
DRAINED_WITHIN_S = 60.0


def _missing_service_modules() -> list[str]:
    missing = []
    for name in SERVICE_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _grpc_health(port: int, service: str) -> str:
    """One probe: what `grpc: {port, service}` asks the server, as the kubelet does."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1.0
            )
        except grpc.RpcError as error:
            return f"rpc error {error.code().name}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _tcp_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture(scope="module")
def specs() -> dict[str, ProcessSpec]:
    missing = _missing_service_modules()
    if missing:
        pytest.skip(f"the service is not in this checkout yet (missing {', '.join(missing)})")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not installed (make test installs it)")
    return process_specs("cpu-dev")


@pytest.fixture(scope="module")
def model_dir() -> Path:
    from tests.helpers.checkpoints import tiny_checkpoint

    return tiny_checkpoint("qwen3_next")


def _port_map(specs: dict[str, ProcessSpec]) -> dict[int, int]:
    manifest_ports = {port for spec in specs.values() for port in spec.ports.values()}
    return {port: _free_port() for port in sorted(manifest_ports)}


def _start(component, spec, port_map, model_dir, tmp_path):
    overrides = {"MODEL_DIR": str(model_dir), "POD_IP": "127.0.0.1", "POD_NAME": f"{component}-0"}
    argv = local_argv(spec, port_map=port_map, overrides=overrides, paths={"/data": str(tmp_path / "redis")})
    (tmp_path / "redis").mkdir(exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        **{k: v for k, v in os.environ.items() if k.startswith(("TRITON_", "UCX_", "RAY_"))},
        **local_env(spec, port_map=port_map, overrides=overrides),
    }
    log = tmp_path / f"{component}.log"
    process = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp_path)
    return process, argv, log


def _wait_until(check, process, log, what: str) -> None:
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode} before it was healthy:\n{_log_tail(log)}")
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} not healthy within {HEALTHY_WITHIN_S}s:\n{_log_tail(log)}")


def test_manifest_processes_pass_their_probes_and_drain(specs, model_dir, tmp_path):
    port_map = _port_map(specs)
    running: dict[str, tuple] = {}
    try:
        for component in START_ORDER:
            spec = specs[component]
            process, argv, log = _start(component, spec, port_map, model_dir, tmp_path)
            running[component] = (process, argv, log)
            for name, probe in spec.probes.items():
                port = port_map[probe.port]
                if probe.kind == "grpc":
                    _wait_until(
                        lambda p=port, s=probe.service: _grpc_health(p, s) == "SERVING",
                        process,
                        log,
                        f"{component} {name} probe (grpc {probe.port} -> {port}) {argv}",
                    )
                else:
                    _wait_until(lambda p=port: _tcp_open(p), process, log, f"{component} {name} probe")
        # Every probe of every component passes once all four run (the router needs the others).
        for component, spec in specs.items():
            for probe in spec.probes.values():
                if probe.kind == "grpc":
                    assert _grpc_health(port_map[probe.port], probe.service) == "SERVING", component
        # Termination as Kubernetes does it: SIGTERM, then wait up to the grace period. Workers
        # drain and leave the index; with no streams in flight they exit 0 promptly.
        for component in ("router", "decode", "prefill"):
            process, _, log = running.pop(component)
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=DRAINED_WITHIN_S)
            except subprocess.TimeoutExpired:
                process.kill()
                pytest.fail(
                    f"{component} did not exit within {DRAINED_WITHIN_S}s of SIGTERM:\n{_log_tail(log)}"
                )
            assert code == 0, f"{component} exited {code} after SIGTERM:\n{_log_tail(log)}"
    finally:
        for process, _, _ in running.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
