"""The chaos run: a load generator (a few threads) runs multi-turn greedy sessions against a
2-prefill + 2-decode cluster indexed in Redis, while a fault injector (fixed seed) SIGKILLs random
workers at random points (each replaced, so capacity recovers), restarts one under its own id
(new epoch) and restarts Redis once. Afterwards every turn must equal `engine.LLM` run alone on the
same prompt (no token lost or repeated), no request may have failed or hung, and every pool must be
back to empty."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import pytest

from engine.sampling_params import SamplingParams
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from tests.chaos.harness import WORKER_ARGS, failovers, kill_worker, restart_worker, stream, wait_pools_idle
from tests.helpers.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(480)]
SEED = 20261126
MIN_REQUESTS = 200
KILLS = 6
LOAD_THREADS = 4
TURNS = (3, 5)
NEW_TOKENS = (6, 40)  # per turn, on top of the previous prompt + answer
MAX_TOKENS = (2, 6)
# Load is paced by the faults: at most this many requests per kill so far (+1), so the kills land
# while sessions run and the run stays a few minutes however fast the machine is.
REQUESTS_PER_KILL = 36
REQUEST_TIMEOUT_S = 90.0


@dataclass
class Turn:
    session: str
    index: int  # turn number in its session
    prompt: list[int]
    max_tokens: int
    output: list[int] = field(default_factory=list)
    finish_reason: str = ""
    error: str = ""


@dataclass
class Figures:
    turns: list[Turn] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)
    redis_restarts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, turn: Turn) -> None:
        with self.lock:
            self.turns.append(turn)

    def may_send(self) -> bool:
        with self.lock:
            return len(self.turns) < REQUESTS_PER_KILL * (len(self.kills) + 1)


def _run_sessions(address: str, thread: int, figures: Figures, stop: threading.Event) -> None:
    rng = random.Random(SEED + thread)
    session_number = 0
    while not stop.is_set():
        session, prompt = f"t{thread}-s{session_number}", []
        session_number += 1
        for index in range(rng.randint(*TURNS)):
            while not figures.may_send():
                if stop.wait(0.05):
                    return
            prompt = prompt + [rng.randrange(5, 1000) for _ in range(rng.randint(*NEW_TOKENS))]
            turn = Turn(session, index, prompt, max_tokens=rng.randint(*MAX_TOKENS))
            try:
                seen = stream(
                    address,
                    token_ids=prompt,
                    max_tokens=turn.max_tokens,
                    session_id=session,
                    timeout_s=REQUEST_TIMEOUT_S,
                )
                turn.output, turn.finish_reason = seen.token_ids, seen.finish_reason
            except Exception as error:  # noqa: BLE001 - counted and reported, never hidden
                turn.error = f"{type(error).__name__}: {error}"
            figures.record(turn)
            if turn.error:
                break
            prompt = prompt + turn.output


def _inject_faults(
    cluster: LocalCluster, redis: RedisServer, figures: Figures, stop: threading.Event
) -> None:
    """Kills stay one per role at a time: a role is hit only at full strength, so the cluster always
    keeps one worker of each role while the replacement starts."""
    rng = random.Random(SEED)
    redis_after = rng.randint(1, KILLS - 1)
    restart_after = rng.randint(1, KILLS - 1)
    replacements = []
    for kill in range(KILLS):
        if stop.wait(rng.uniform(0.5, 2.0)):
            return
        victim = _full_strength_member(cluster, rng)
        kill_worker(cluster, victim.worker_id)
        with figures.lock:
            figures.kills.append(victim.worker_id)
        replacement = threading.Thread(target=cluster.pool.add, args=(victim.role,), daemon=True)
        replacement.start()  # a fresh worker replaces it: capacity recovers
        replacements.append(replacement)
        if kill == redis_after:
            redis.stop()
            time.sleep(rng.uniform(0.2, 1.0))
            redis.restart()
            figures.redis_restarts += 1
        if kill == restart_after:
            member = _full_strength_member(cluster, rng)
            restart_worker(cluster.pool, member.worker_id)
            figures.restarts.append(member.worker_id)
    for replacement in replacements:
        replacement.join(120)


def _full_strength_member(cluster: LocalCluster, rng: random.Random, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        members = sorted(cluster.pool.members(), key=lambda m: m.worker_id)
        full = [m for m in members if sum(n.role == m.role for n in members) >= 2]
        if full:
            return rng.choice(full)
        time.sleep(0.1)
    raise AssertionError("no role back at full strength")


def _references(model: str, turns: list[Turn]) -> dict[int, list[int]]:
    """engine.LLM's greedy output for every turn, by id(turn): one batch per turn number, so each
    later turn finds its session's earlier prompt + answer in the reference's own prefix cache,
    and a batch holds every session at once (few, wide steps: the cheapest way on a CPU)."""
    from engine.llm import LLM

    llm = LLM(model, max_num_seqs=256, max_num_batched_tokens=8192)
    outputs: dict[int, list[int]] = {}
    for index in sorted({t.index for t in turns}):
        batch = [t for t in turns if t.index == index]
        params = [SamplingParams(temperature=0.0, max_tokens=t.max_tokens, ignore_eos=True) for t in batch]
        for turn, result in zip(batch, llm.generate([t.prompt for t in batch], params), strict=True):
            outputs[id(turn)] = list(result.token_ids)
    return outputs


def test_chaos(tiny_model):
    figures = Figures()
    with RedisServer(prefer_docker=False) as redis:
        router = RouterConfig(
            model="", listen="127.0.0.1:0", local_prefill_threshold=64, transfer_deadline_s=10.0
        )
        spec = ClusterSpec(
            tiny_model, prefill=2, decode=2, index=redis.url, worker_args=WORKER_ARGS, router=router
        )
        with LocalCluster(spec) as cluster:
            stop_load, stop_faults = threading.Event(), threading.Event()
            load = [
                threading.Thread(
                    target=_run_sessions, args=(cluster.address, i, figures, stop_load), daemon=True
                )
                for i in range(LOAD_THREADS)
            ]
            faults = threading.Thread(
                target=_inject_faults, args=(cluster, redis, figures, stop_faults), daemon=True
            )
            started = time.monotonic()
            for thread in [*load, faults]:
                thread.start()
            faults.join(300)
            assert not faults.is_alive(), "the fault injector hung"
            while len(figures.turns) < MIN_REQUESTS and time.monotonic() - started < 300:
                time.sleep(0.5)
            stop_load.set()
            for thread in load:
                thread.join(REQUEST_TIMEOUT_S + 10)
            hung = sum(thread.is_alive() for thread in load)
            elapsed = time.monotonic() - started
            failed_over = failovers(cluster)
            cluster.router.core.registry.wait_until_ready(2, 2, timeout_s=60)
            workers = wait_pools_idle(cluster, timeout_s=60)
            killed_ids = set(figures.kills) - set(figures.restarts)
            assert not killed_ids & {w.worker_id for w in workers}, "a killed worker is still listed"

    turns = list(figures.turns)
    errors = [t for t in turns if t.error]
    done = [t for t in turns if not t.error]
    lost_or_extra = sum(abs(len(t.output) - t.max_tokens) for t in done)
    print(
        f"\nchaos: {len(turns)} requests in {len({t.session for t in turns})} sessions over {elapsed:.0f} s, "
        f"{len(figures.kills)} SIGKILLs survived ({', '.join(figures.kills)}), "
        f"{len(figures.restarts)} restart(s) under the same id, {figures.redis_restarts} Redis restart(s), "
        f"{failed_over:.0f} failovers, {len(errors)} failed, {hung} hung, "
        f"{lost_or_extra} tokens lost or duplicated",
        flush=True,
    )
    assert hung == 0
    assert not errors, [(t.session, t.error) for t in errors[:5]]
    assert len(turns) >= MIN_REQUESTS
    assert len(figures.kills) >= 5 and figures.redis_restarts == 1
    assert lost_or_extra == 0
    assert all(t.finish_reason == "length" for t in done)
    reference_started = time.monotonic()
    references = _references(tiny_model, done)
    mismatched = [
        (t.session, t.index, t.output, references[id(t)]) for t in done if t.output != references[id(t)]
    ]
    print(
        f"chaos: {len(mismatched)} of {len(done)} outputs differ from engine.LLM "
        f"(references in {time.monotonic() - reference_started:.0f} s)",
        flush=True,
    )
    assert not mismatched, mismatched[:3]
