"""Worker pools: StaticPool resolution, ProcessPool / RayPool lifecycle (start, readiness, scale,
graceful stop, kill, failed start).

Most tests run the pools over `fake_worker.py`, a stand-in with the real worker's flags, ready file,
health service and `GetLoad` but no engine: they test the pool, not the worker. The `e2e` tests at
the end start real `python -m prefill_worker` / `decode_worker` processes on a tiny checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest

from baton_pb.v1 import worker_pb2, worker_pb2_grpc
from router.pools import (
    PoolCannotScale,
    PoolError,
    PoolMember,
    ProcessPool,
    StaticPool,
    WorkerSpec,
    WorkerStartError,
)
from router.pools.health import is_serving

FAKE_WORKER = Path(__file__).with_name("fake_worker.py")
FAKE_STARTER = "tests.router.fake_worker:start_fake_{role}"
REPO = Path(__file__).resolve().parents[2]
ENGINE_READY = (REPO / "engine" / "llm_engine.py").is_file()


def fake_command(role: str) -> list[str]:
    return [sys.executable, str(FAKE_WORKER), role]


def get_load(address: str):
    with grpc.insecure_channel(address) as channel:
        return worker_pb2_grpc.WorkerControlStub(channel).GetLoad(worker_pb2.GetLoadRequest(), timeout=5)


def assert_members_are_the_workers(members: list[PoolMember]) -> None:
    """Each member's address is served by the worker the pool says it is."""
    for member in members:
        info = get_load(member.address)
        assert (info.worker_id, info.role) == (member.worker_id, member.role)


def wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# ---- StaticPool ----------------------------------------------------------------------------------
def test_static_pool_lists_addresses_and_cannot_scale():
    pool = StaticPool(["10.0.0.1:50061", "10.0.0.2:50061"], ["10.0.0.3:50071"])
    pool.start(2, 1)
    assert pool.members() == [
        PoolMember("10.0.0.1:50061", "prefill"),
        PoolMember("10.0.0.2:50061", "prefill"),
        PoolMember("10.0.0.3:50071", "decode"),
    ]
    assert not pool.can_scale
    with pytest.raises(PoolCannotScale):
        pool.add("decode")
    with pytest.raises(PoolCannotScale):
        pool.remove("10.0.0.3:50071")


@pytest.mark.parametrize("bad", ["nohost", "host:port", ":50061", "dns:///name", "dns:///:5"])
def test_static_pool_rejects_bad_addresses(bad):
    with pytest.raises(ValueError, match="bad worker address"):
        StaticPool([bad], [])


def test_static_pool_resolves_dns_names_with_the_system_resolver():
    pool = StaticPool(["dns:///localhost:50061"], [])
    addresses = [m.address for m in pool.members()]
    assert "127.0.0.1:50061" in addresses or "[::1]:50061" in addresses
    assert all(m.role == "prefill" for m in pool.members())


def test_static_pool_re_resolves_after_the_cache_and_survives_dns_failures():
    answers = {"decode-svc": ["10.1.0.1"]}
    calls = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in answers:
            raise OSError("NXDOMAIN")
        return answers[host]

    pool = StaticPool([], ["dns:///decode-svc:50071"], resolver=resolver, cache_s=0.2)
    assert [m.address for m in pool.members()] == ["10.1.0.1:50071"]
    answers["decode-svc"] = ["10.1.0.1", "10.1.0.2", "fd00::7"]  # the Deployment scaled up
    assert [m.address for m in pool.members()] == ["10.1.0.1:50071"]  # still cached
    assert len(calls) == 1
    time.sleep(0.25)
    assert [m.address for m in pool.members()] == ["10.1.0.1:50071", "10.1.0.2:50071", "[fd00::7]:50071"]
    del answers["decode-svc"]  # DNS outage: keep the last answer
    time.sleep(0.25)
    assert len(pool.members()) == 3
    assert len(calls) == 3


# ---- ProcessPool over the stand-in worker --------------------------------------------------------
@pytest.fixture
def process_pool(tmp_path):
    pool = ProcessPool(WorkerSpec(model=str(tmp_path)), command=fake_command, stop_timeout_s=5)
    yield pool
    pool.close()


@pytest.mark.timeout(60)
def test_process_pool_starts_scales_and_stops_gracefully(process_pool):
    process_pool.start(prefill=1, decode=1)
    members = process_pool.members()
    assert sorted(m.role for m in members) == ["decode", "prefill"]
    assert len({m.address for m in members}) == 2
    assert_members_are_the_workers(members)

    added = process_pool.add("decode")
    assert added in process_pool.members() and is_serving(added.address)
    assert_members_are_the_workers([added])
    process = process_pool.process(added.worker_id)

    process_pool.remove(added.address)  # by address; by worker id works too
    assert process.returncode == 0  # SIGTERM: the worker drained and exited by itself
    assert added not in process_pool.members()
    assert not is_serving(added.address, timeout_s=0.5)
    with pytest.raises(PoolError):
        process_pool.remove(added.worker_id)


@pytest.mark.timeout(60)
def test_process_pool_drops_a_killed_worker(process_pool):
    process_pool.start(prefill=1, decode=1)
    victim = next(m for m in process_pool.members() if m.role == "decode")
    process_pool.process(victim.worker_id).send_signal(signal.SIGKILL)
    wait_for(lambda: victim not in process_pool.members())
    assert [m.role for m in process_pool.members()] == ["prefill"]


@pytest.mark.timeout(60)
def test_process_pool_reports_a_crashing_worker_with_its_log(tmp_path):
    pool = ProcessPool(WorkerSpec(model=str(tmp_path / "missing")), command=fake_command)
    started = time.monotonic()
    with pytest.raises(WorkerStartError, match="does not exist"):
        pool.start(prefill=1, decode=1)
    assert time.monotonic() - started < 20  # reported when it exits, not at the startup deadline
    assert pool.members() == []
    pool.close()


@pytest.mark.timeout(60)
def test_process_pool_startup_deadline_and_sigkill_fallback(tmp_path):
    slow = ProcessPool(
        WorkerSpec(model=str(tmp_path)), command=fake_command, startup_timeout_s=0.5,
        env={"FAKE_WORKER_STARTUP_DELAY_S": "30"},
    )  # fmt: skip
    with pytest.raises(WorkerStartError, match="not serving after .* --startup-timeout"):
        slow.add("prefill")
    slow.close()

    stubborn = ProcessPool(
        WorkerSpec(model=str(tmp_path)), command=fake_command, stop_timeout_s=0.5,
        env={"FAKE_WORKER_IGNORE_SIGTERM": "1"},
    )  # fmt: skip
    member = stubborn.add("prefill")
    process = stubborn.process(member.worker_id)
    stubborn.close()
    assert process.returncode == -signal.SIGKILL
    assert stubborn.members() == []


def test_worker_spec_argv_matches_the_worker_parser():
    from worker.config import METRICS_ANY_PORT, worker_config_from_args

    spec = WorkerSpec(model="/m", transfer="ucx", index="redis://r:6379/0", block_size=32, memory_gb=1.5)
    config = worker_config_from_args("decode", spec.argv("decode-3", ready_file="/tmp/r"))
    assert (config.model, config.transfer, config.index, config.block_size) == (
        "/m",
        "ucx",
        "redis://r:6379/0",
        32,
    )
    assert (config.worker_id, config.listen, config.metrics_port, config.ready_file) == (
        "decode-3",
        "127.0.0.1:0",
        METRICS_ANY_PORT,  # /metrics on a free port, reported in ListWorkers
        "/tmp/r",
    )
    assert not config.insecure
    exposed = worker_config_from_args("decode", spec.argv("d", listen="0.0.0.0:0", insecure=True))
    assert exposed.insecure and exposed.listen == "0.0.0.0:0"
    assert config.engine.cache_bytes == int(1.5 * (1 << 30))


# ---- RayPool over the stand-in worker ------------------------------------------------------------
@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray")
    from router.pools.ray_pool import ensure_ray

    started = ensure_ray(num_cpus=8)
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_ray_pool_scales_restarts_and_reports_failed_starts(ray_cluster, tmp_path):
    from router.pools import RayPool

    pool = RayPool(WorkerSpec(model=str(tmp_path)), starter=FAKE_STARTER, stop_timeout_s=5)
    try:
        pool.start(prefill=1, decode=1)
        assert_members_are_the_workers(pool.members())
        added = pool.add("prefill")
        assert_members_are_the_workers([added])
        pool.remove(added.worker_id)
        assert added not in pool.members()
        wait_for(lambda: not is_serving(added.address, timeout_s=0.5))

        # Ray restarts a killed worker actor: same worker id, new port, serving again.
        victim = next(m for m in pool.members() if m.role == "decode")
        os.kill(ray_cluster.get(pool.actor(victim.worker_id).info.remote())["pid"], signal.SIGKILL)
        wait_for(
            lambda: any(
                m.worker_id == victim.worker_id and m.address != victim.address for m in pool.members()
            )
        )
        assert_members_are_the_workers(pool.members())
    finally:
        pool.close()
    assert pool.members() == []

    with pytest.raises(WorkerStartError, match="does not exist"):
        RayPool(WorkerSpec(model=str(tmp_path / "missing")), starter=FAKE_STARTER).add("decode")


# ---- real workers ---------------------------------------------------------------------------------
needs_engine = pytest.mark.skipif(not ENGINE_READY, reason="engine/llm_engine.py has not landed yet")


def real_worker_spec() -> WorkerSpec:
    from tests.helpers.checkpoints import tiny_checkpoint

    return WorkerSpec(model=str(tiny_checkpoint()), transfer="tcp", memory_gb=0.05)


def assert_real_workers_serve(members: list[PoolMember]) -> None:
    assert_members_are_the_workers(members)
    for member in members:
        load = get_load(member.address).load
        assert load.total_pages > 0 and load.free_pages == load.total_pages


@pytest.mark.e2e
@needs_engine
@pytest.mark.timeout(240)
def test_process_pool_runs_real_workers():
    with ProcessPool(real_worker_spec()) as pool:
        pool.start(prefill=1, decode=1)
        assert_real_workers_serve(pool.members())
        decode = next(m for m in pool.members() if m.role == "decode")
        process = pool.process(decode.worker_id)
        pool.remove(decode.worker_id)
        assert process.returncode == 0


@pytest.mark.e2e
@pytest.mark.ray
@needs_engine
@pytest.mark.timeout(240)
def test_ray_pool_runs_real_workers(ray_cluster):
    from router.pools import RayPool

    with RayPool(real_worker_spec()) as pool:
        pool.start(prefill=1, decode=1)
        assert_real_workers_serve(pool.members())
