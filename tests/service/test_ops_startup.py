"""Starting Baton the way operators do, and each rough edge they met: a taken port (named, before
any worker starts), listening beyond loopback without auth, a missing or invalid model (one line,
no traceback), unreachable workers (warned at router start, `unreachable` in `baton workers`)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import pytest

from baton.cli import main as baton_main
from router.config import RouterConfig
from router.pools.static import StaticPool
from router.server import bind_router, start_router
from rpc.listen import ListenError

pytestmark = pytest.mark.timeout(180)
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _json_lines(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tiny():
    from tests.helpers.checkpoints import tiny_checkpoint

    return str(tiny_checkpoint())


@pytest.fixture
def first_router():
    """A router's listeners (public, admin, metrics), bound as a running router holds them."""
    listeners = bind_router(
        RouterConfig(model="", listen="127.0.0.1:0", admin_listen="127.0.0.1:0", metrics_port=_free_port())
    )
    yield listeners
    listeners.close()


# ---- ports ---------------------------------------------------------------------------------------
def test_a_second_router_cannot_bind_a_taken_port(first_router):
    port = first_router.address.rpartition(":")[2]
    with pytest.raises(ListenError, match=f"127.0.0.1:{port}"):
        bind_router(RouterConfig(model="", listen=f"127.0.0.1:{port}"))


@pytest.mark.e2e
@pytest.mark.parametrize("taken", ["listen", "admin-listen", "metrics-port"])
def test_baton_serve_on_a_taken_port_exits_naming_it_before_any_worker_starts(first_router, tiny, taken):
    ports = {
        "listen": first_router.address.rpartition(":")[2],
        "admin-listen": first_router.admin_address.rpartition(":")[2],
        "metrics-port": str(first_router.metrics_server.port),
    }
    flags = {"listen": "127.0.0.1:0", "admin-listen": "127.0.0.1:0", "metrics-port": str(_free_port())}
    flags[taken] = ports[taken] if taken == "metrics-port" else f"127.0.0.1:{ports[taken]}"
    command = [sys.executable, "-m", "baton", "serve", "--model", tiny, "--pool", "process", "--memory-gb", "0.05"]
    command += [part for flag, value in flags.items() for part in (f"--{flag}", value)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode != 0
    records = _json_lines(done.stderr)
    assert any(f"127.0.0.1:{ports[taken]}" in r["message"] for r in records), done.stderr
    assert not any("started prefill" in r["message"] or "started decode" in r["message"] for r in records)
    assert time.monotonic() - started < 60


def test_python_m_router_on_a_taken_port_is_one_line(first_router, tiny):
    command = [
        sys.executable, "-m", "router", "--model", tiny, "--listen", first_router.address,
        "--admin-listen", "127.0.0.1:0", "--metrics-port", "0", "--decode", "127.0.0.1:1",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2
    (record,) = _json_lines(done.stderr)
    assert first_router.address in record["message"] and "Traceback" not in done.stderr


# ---- safe by default -----------------------------------------------------------------------------
def test_listening_beyond_loopback_needs_auth_or_insecure(tmp_path, caplog):
    with pytest.raises(ListenError, match="--insecure"):
        bind_router(RouterConfig(model="", listen="0.0.0.0:0", admin_listen=""))
    with pytest.raises(ListenError, match="admin"):
        bind_router(RouterConfig(model="", listen="127.0.0.1:0", admin_listen="0.0.0.0:0"))
    with caplog.at_level(logging.WARNING, logger="rpc.listen"):
        bind_router(RouterConfig(model="", listen="0.0.0.0:0", admin_listen="", insecure=True)).close()
    assert any("without authentication" in r.getMessage() for r in caplog.records)
    tokens = tmp_path / "tokens"
    tokens.write_text("secret tenant-a admin\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rpc.listen"):
        bind_router(RouterConfig(model="", listen="0.0.0.0:0", admin_listen="", auth_tokens_file=str(tokens))).close()
    assert not caplog.records, "with auth on, 0.0.0.0 is fine without --insecure"


# ---- worker startup errors: one line, no traceback -----------------------------------------------
def _worker(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "decode_worker", *args, "--metrics-port", "0"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)


def _one_line_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (record,) = _json_lines(done.stderr)
    assert record["level"] == "ERROR"
    for needle in needles:
        assert needle in record["message"], record["message"]


def test_worker_with_a_missing_model_is_one_line():
    _one_line_error(_worker("--model", "/missing", "--listen", "127.0.0.1:0"), "/missing", "does not exist")


def test_worker_with_an_invalid_model_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    _one_line_error(_worker("--model", str(tmp_path), "--listen", "127.0.0.1:0"), "config.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(_worker("--model", str(empty), "--listen", "127.0.0.1:0"), "no config.json")


def test_worker_on_a_taken_port_or_beyond_loopback_is_one_line(first_router, tiny):
    _one_line_error(_worker("--model", tiny, "--listen", first_router.address), first_router.address)
    _one_line_error(_worker("--model", tiny, "--listen", "0.0.0.0:0"), "--insecure")


# ---- unreachable workers -------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_unreachable_workers_are_warned_at_start_and_listed_as_unreachable(tiny, caplog, capsys):
    dead = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    config = RouterConfig(model=tiny, listen="127.0.0.1:0", admin_listen="127.0.0.1:0")
    with caplog.at_level(logging.WARNING, logger="router.registry"):
        router = start_router(config, StaticPool([dead[0]], [dead[1]]))
    try:
        warned = " ".join(r.getMessage() for r in caplog.records)
        assert all(address in warned and "unreachable" in warned for address in dead)
        workers = router.core.list_workers().workers
        assert sorted(w.state for w in workers) == ["unreachable", "unreachable"]
        assert all(w.worker_id for w in workers), "an unreachable worker still has a name"
        assert baton_main(["workers", "--router", router.admin_address]) == 0
        rows = capsys.readouterr().out.splitlines()[1:]
        assert len(rows) == 2 and all(row.split()[3] == "unreachable" for row in rows)
    finally:
        router.stop()


# ---- a start you can follow ----------------------------------------------------------------------
@pytest.mark.e2e
def test_worker_logs_its_load_as_json_lines_and_serves(tiny, tmp_path):
    ready = tmp_path / "ready"
    command = [
        sys.executable, "-m", "decode_worker", "--model", tiny, "--listen", "127.0.0.1:0",
        "--metrics-port", "0", "--ready-file", str(ready), "--worker-id", 'decode "quoted" 0',
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 90
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), "the worker did not start"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
    records = _json_lines(stderr)  # every line, including the quoted worker id, is JSON
    messages = [r["message"] for r in records]
    assert any(m.startswith("loading model") and "GB" in m for m in messages), messages
    assert any("loaded in" in m for m in messages)
    assert any('decode "quoted" 0' in m and "serving on" in m for m in messages)


@pytest.mark.e2e
def test_baton_serve_startup_timeout_is_a_flag(tiny):
    command = [
        sys.executable, "-m", "baton", "serve", "--model", tiny, "--pool", "process", "--memory-gb", "0.05",
        "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--metrics-port", "0",
        "--startup-timeout", "0.5",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 1
    (error,) = [r for r in _json_lines(done.stderr) if r["level"] == "ERROR"]
    assert "after 0.5 s" in error["message"] and "--startup-timeout" in error["message"], error["message"]


def test_a_worker_being_started_is_listed_as_loading(tiny):
    from router.pools.base import WorkerSpec, WorkerStartError
    from router.pools.process import ProcessPool

    never_ready = lambda role: [sys.executable, "-c", "import time; time.sleep(60)"]  # noqa: E731
    pool = ProcessPool(WorkerSpec(model=tiny), command=never_ready, startup_timeout_s=4.0)
    router = start_router(RouterConfig(model=tiny, listen="127.0.0.1:0"), pool)
    adding = futures.ThreadPoolExecutor(1).submit(pool.add, "prefill")
    try:
        deadline = time.monotonic() + 3
        while not pool.starting() and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = router.core.list_workers().workers
        assert [(w.worker_id, w.role, w.state) for w in workers] == [("prefill-0", "prefill", "loading")]
        with pytest.raises(WorkerStartError, match="--startup-timeout"):
            adding.result(timeout=30)
        assert router.core.list_workers().workers == []
    finally:
        router.stop()
        pool.close()
