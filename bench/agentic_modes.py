"""Served modes of the agentic benchmark: the same multi-turn workload against a live local cluster
(router + workers as processes, gRPC), one mode after another.

Sessions arrive as a seeded Poisson process; each runs in its own thread and is closed-loop (turn
k+1 is sent when turn k has finished, with everything resent). Modes differ only in the cluster:

- `colocated`: 1 prefill + 1 decode, the router never disaggregates (the decode worker prefills).
- `disaggregated`: 1 prefill + 1 decode, every prefill on the prefill worker (embedded index).
- `global_index`: 2 prefill + 2 decode, a Redis index, disaggregated: sessions spread, and a turn
  that lands on another prefill worker fetches its prefix from the peer that holds it.
- `cache_off`: like `disaggregated`, with the workers' prefix cache off (every prompt recomputed).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from bench.workload import AgenticWorkload, WorkloadConfig

NEVER_DISAGGREGATE = 10**9
WARMUP_TOKENS = 64
# An agent retries a turn the service refused or dropped (as a real client would, with backoff);
# every retry is counted in the results, and TTFT/e2e include the failed attempts.
CLIENT_RETRIES = 3
RETRY_BACKOFF_S = 1.0


@dataclass(frozen=True, slots=True)
class ModeSpec:
    name: str
    prefill: int = 1
    decode: int = 1
    local_prefill_threshold: int = 0
    redis_index: bool = False
    prefix_cache: bool = True


MODES: dict[str, ModeSpec] = {
    m.name: m
    for m in (
        ModeSpec("colocated", local_prefill_threshold=NEVER_DISAGGREGATE),
        ModeSpec("disaggregated"),
        ModeSpec("global_index", prefill=2, decode=2, redis_index=True),
        ModeSpec("cache_off", prefix_cache=False),
    )
}


@dataclass(frozen=True, slots=True)
class RunOptions:
    model: str
    workload: WorkloadConfig
    rate: float  # session arrivals per second (Poisson)
    transfer: str = "tcp"
    memory_gb: float = 1.0
    timeout_s: float = 600.0


@dataclass(slots=True)
class ServedTurn:
    session: int
    turn: int
    started_s: float  # since the mode's first arrival
    prompt_tokens: int
    cached_tokens: int
    fetched_tokens: int
    ttft_s: float
    e2e_s: float
    output: list[int]
    prefill_worker: str
    decode_worker: str
    retries: int = 0


@dataclass(slots=True)
class ModeRun:
    mode: str
    prefill_role: str  # the role whose engines compute prompts in this mode
    turns: list[ServedTurn] = field(default_factory=list)
    wall_s: float = 0.0
    transfer_bytes: float = 0.0
    workers: dict[str, dict] = field(default_factory=dict)  # worker id -> load deltas over the run
    errors: list[str] = field(default_factory=list)
    retry_reasons: list[str] = field(default_factory=list)


def arrival_times(sessions: int, rate: float, seed: int) -> list[float]:
    """Seconds after the start at which each session sends its first turn (the first at 0)."""
    rng = random.Random(seed)
    times, now = [], 0.0
    for _ in range(sessions):
        times.append(now)
        now += rng.expovariate(rate) if rate > 0 else 0.0
    return times


def run_mode(spec: ModeSpec, options: RunOptions) -> ModeRun:
    with _cluster(spec, options) as cluster:
        _warm_up(cluster, spec, options)
        core = cluster.router.core
        loads_before = _loads(core)
        bytes_before = _transfer_bytes(core)
        prefill_role = "decode" if spec.local_prefill_threshold >= NEVER_DISAGGREGATE else "prefill"
        run = _drive_sessions(cluster.address, ModeRun(spec.name, prefill_role), options)
        run.transfer_bytes = _transfer_bytes(core) - bytes_before
        run.workers = _load_deltas(loads_before, _loads(core))
    return run


@contextlib.contextmanager
def _cluster(spec: ModeSpec, options: RunOptions):
    from router.config import RouterConfig
    from router.local_cluster import ClusterSpec, LocalCluster

    with contextlib.ExitStack() as stack:
        index = "embedded"
        if spec.redis_index:
            from tests.helpers.redis_server import redis_server

            index = stack.enter_context(redis_server(prefer_docker=False)).url
        router = RouterConfig(
            model=options.model, listen="127.0.0.1:0", local_prefill_threshold=spec.local_prefill_threshold
        )
        cluster_spec = ClusterSpec(
            options.model,
            prefill=spec.prefill,
            decode=spec.decode,
            transfer=options.transfer,
            index=index,
            memory_gb=options.memory_gb,
            worker_args=() if spec.prefix_cache else ("--no-prefix-cache",),
            router=router,
        )
        yield stack.enter_context(LocalCluster(cluster_spec))


def _warm_up(cluster, spec: ModeSpec, options: RunOptions) -> None:
    """One short request per worker pair, prompts unrelated to the workload (first allocations and
    the first transfer are not what the benchmark measures)."""
    from baton.client import BatonClient

    vocab = cluster.router.core.model_config.vocab_size
    rng = random.Random(12345)
    client = BatonClient(cluster.address)
    try:
        for i in range(max(spec.prefill, spec.decode)):
            prompt = [rng.randrange(5, vocab - 5) for _ in range(WARMUP_TOKENS)]
            client.generate(
                session_id=f"warmup-{i}", token_ids=prompt, temperature=0.0, max_tokens=2, ignore_eos=True
            )
    finally:
        client.close()


def _drive_sessions(address: str, run: ModeRun, options: RunOptions) -> ModeRun:
    """One thread per session; each sleeps until its arrival, then runs its turns back to back."""
    from baton.client import BatonClient
    from engine.tokenizer import Tokenizer

    config = options.workload
    workload = AgenticWorkload(Tokenizer.from_dir(options.model), config)
    workload_lock = threading.Lock()  # prompts are built from per-session RNGs and one tokenizer
    results_lock = threading.Lock()
    bar = tqdm(total=config.sessions * config.turns, desc=f"{run.mode:>13}", unit="turn", leave=True)
    arrivals = arrival_times(config.sessions, options.rate, config.seed)
    start = time.perf_counter()

    def session_main(index: int) -> None:
        time.sleep(max(0.0, start + arrivals[index] - time.perf_counter()))
        session = workload.sessions[index]
        client = BatonClient(address)
        try:
            with workload_lock:
                prompt = workload.first_prompt(session)
            for turn in range(config.turns):
                sent = time.perf_counter()
                result, last_started, failures = _generate_with_retries(
                    client, f"agent-{index}", prompt, config.output_tokens, options
                )
                waited = last_started - sent  # failed attempts and backoff before the one that worked
                record = ServedTurn(
                    index, turn, sent - start, len(prompt), result.cached_tokens, result.fetched_tokens,
                    waited + result.ttft_s, waited + result.e2e_s, list(result.token_ids),
                    result.prefill_worker, result.decode_worker, len(failures),
                )  # fmt: skip
                with results_lock:
                    run.retry_reasons.extend(failures)
                with results_lock:
                    run.turns.append(record)
                bar.update(1)
                if turn + 1 < config.turns:
                    with workload_lock:
                        prompt = workload.next_prompt(session, prompt, record.output)
        except Exception as error:  # noqa: BLE001 - reported in the results, the other sessions go on
            with results_lock:
                run.errors.append(f"session {index}: {type(error).__name__}: {error}")
        finally:
            client.close()

    threads = [
        threading.Thread(target=session_main, args=(i,), name=f"agent-{i}") for i in range(config.sessions)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.wall_s = time.perf_counter() - start
    bar.close()
    run.turns.sort(key=lambda t: (t.session, t.turn))
    return run


def _generate_with_retries(client, session_id: str, prompt: list[int], max_tokens: int, options: RunOptions):
    """Returns (result, when the attempt that worked started, reasons of the failed attempts)."""
    import grpc

    failures: list[str] = []
    while True:
        started = time.perf_counter()
        try:
            result = client.generate(
                session_id=session_id, token_ids=prompt, temperature=0.0, max_tokens=max_tokens,
                ignore_eos=True, timeout_s=options.timeout_s,
            )  # fmt: skip
        except grpc.RpcError as error:
            if error.code() not in _retryable() or len(failures) >= CLIENT_RETRIES:
                raise
            failures.append(f"{error.code().name}: {error.details()}")
            time.sleep(RETRY_BACKOFF_S * 2 ** (len(failures) - 1))
            continue
        return result, started, failures


def _retryable():
    import grpc

    return {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


def _transfer_bytes(core) -> float:
    value = core.metrics.registry.get_sample_value("baton_router_transfer_bytes_total")
    return float(value or 0.0)


LOAD_FIELDS = ("prompt_tokens", "cached_tokens", "computed_tokens", "fetched_tokens")


def _loads(core) -> dict[str, dict]:
    return {
        w.worker_id: {"role": w.role, **{name: getattr(w.load, name) for name in LOAD_FIELDS}}
        for w in core.list_workers().workers
    }


def _load_deltas(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    deltas = {}
    for worker_id, now in after.items():
        then = before.get(worker_id, {})
        deltas[worker_id] = {"role": now["role"], **{k: now[k] - then.get(k, 0) for k in LOAD_FIELDS}}
    return deltas
