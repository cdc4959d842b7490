"""Prefix index lookup latency: `python -m bench.index`.

64 simulated workers hold 2,000 sessions (8 tenants; every session starts with its tenant's shared
1K-token system prompt, then 1K–8K tokens of its own; a quarter are also held by a second worker;
a state checkpoint every 512 tokens and at the end). Probe sessions of 8K / 32K / 128K tokens are
held in full by a prefill and a decode worker; each probe prompt is such a session plus a new
512-token turn, so a lookup walks the whole held prefix before it stops. Block size 16.
Prints a table and writes bench/results/index.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import time
from pathlib import Path

import redis

from prefix_index import EmbeddedPrefixIndex, IndexEvent, PrefixIndex, namespace_for
from prefix_index.redis_index import RedisPrefixIndex
from tests.helpers.redis_server import RedisServer

BLOCK = 16
WORKERS = 64
SESSIONS = 2000
TENANTS = 8
SYSTEM_BLOCKS = 1024 // BLOCK
CHECKPOINT_EVERY = 512 // BLOCK
PROBE_TOKENS = (8 * 1024, 32 * 1024, 128 * 1024)
PROBES_PER_SIZE = 4
NEW_TURN_BLOCKS = 512 // BLOCK
RESULTS = Path(__file__).parent / "results" / "index.json"


def random_hashes(rng: random.Random, n: int) -> list[int]:
    return [rng.getrandbits(64) for _ in range(n)]


def checkpoints_of(hashes: list[int]) -> tuple[int, ...]:
    ends = set(range(CHECKPOINT_EVERY - 1, len(hashes), CHECKPOINT_EVERY)) | {len(hashes) - 1}
    return tuple(hashes[i] for i in sorted(ends))


def build_workload(seed: int):
    """(publications, probes): publications = worker → [(namespace, hashes)]."""
    rng = random.Random(seed)
    systems = [random_hashes(rng, SYSTEM_BLOCKS) for _ in range(TENANTS)]
    namespaces = [namespace_for("qwen3-next-80b", f"tenant-{t}") for t in range(TENANTS)]
    held: dict[str, list[tuple[str, list[int]]]] = {f"worker-{w:02d}": [] for w in range(WORKERS)}
    names = sorted(held)
    for s in range(SESSIONS):
        tenant = s % TENANTS
        hashes = systems[tenant] + random_hashes(rng, rng.randint(1024, 8192) // BLOCK)
        for worker in rng.sample(names, 2 if s % 4 == 0 else 1):
            held[worker].append((namespaces[tenant], hashes))
    probes = []
    for tokens in PROBE_TOKENS:
        for p in range(PROBES_PER_SIZE):
            tenant = p % TENANTS
            context = systems[tenant] + random_hashes(rng, tokens // BLOCK - SYSTEM_BLOCKS)
            for worker in rng.sample(names, 2):  # its prefill and its decode worker
                held[worker].append((namespaces[tenant], context))
            probes.append((tokens, namespaces[tenant], context + random_hashes(rng, NEW_TURN_BLOCKS)))
    return held, probes


def load(index: PrefixIndex, held) -> float:
    started = time.perf_counter()
    for worker, sessions in held.items():
        index.heartbeat(worker, 1, 3600)
        for namespace, hashes in sessions:
            index.publish(worker, 1, namespace, [IndexEvent("stored", tuple(hashes), checkpoints_of(hashes))])
    elapsed = time.perf_counter() - started
    gc.collect()
    gc.freeze()  # a million long-lived ints: keep full collections out of the timed lookups
    return elapsed


def measure(index: PrefixIndex, probes, repeats: int, server=None) -> dict[int, dict[str, float]]:
    results = {}
    for tokens in PROBE_TOKENS:
        mine = [p for p in probes if p[0] == tokens]
        if server is not None:
            server.config_resetstat()
        times = []
        for r in range(repeats):
            _, namespace, prompt = mine[r % len(mine)]
            started = time.perf_counter()
            hits = index.lookup(namespace, prompt)
            times.append(time.perf_counter() - started)
            held_blocks = len(prompt) - NEW_TURN_BLOCKS
            assert sum(h.blocks == held_blocks for h in hits.values()) >= 2, "probe holders missing"
        times.sort()
        results[tokens] = {
            "p50_ms": 1e3 * statistics.median(times),
            "p99_ms": 1e3 * times[min(len(times) - 1, int(0.99 * len(times)))],
            "mean_ms": 1e3 * statistics.fmean(times),
            "lookups": len(times),
            "hashes": len(mine[0][2]),
        }
        if server is not None:  # time inside Redis (the script), apart from client and scheduling
            script = server.info("commandstats")["cmdstat_evalsha"]
            results[tokens]["server_mean_ms"] = script["usec_per_call"] / 1e3
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=300, help="lookups per prompt size")
    parser.add_argument("--redis-url", default="", help="an existing Redis (default: start one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    held, probes = build_workload(args.seed)
    entries = sum(len(h) for sessions in held.values() for _, h in sessions)
    report = {
        "workers": WORKERS,
        "sessions": SESSIONS,
        "block_size": BLOCK,
        "entries": entries,
        "indexes": {},
    }

    embedded = EmbeddedPrefixIndex()
    report["indexes"]["embedded"] = {
        "load_s": load(embedded, held),
        "lookup": measure(embedded, probes, args.repeats),
    }
    with RedisServer() if not args.redis_url else _Existing(args.redis_url) as server:
        with RedisPrefixIndex(server.url, key_prefix="bench") as redis_index:
            load_s = load(redis_index, held)
            measure(redis_index, probes, 20)  # warm the script cache and connections
            lookup = measure(redis_index, probes, args.repeats, server=redis.Redis.from_url(server.url))
            report["indexes"]["redis"] = {"load_s": load_s, "lookup": lookup}

    print(f"{WORKERS} workers, {SESSIONS} sessions, {entries:,} (worker, block) entries, block {BLOCK}")
    print(
        f"{'index':10} {'prompt':>8} {'hashes':>7} {'p50 ms':>8} {'p99 ms':>8} {'in-redis ms':>11} {'load s':>7}"
    )
    for name, result in report["indexes"].items():
        for tokens, row in result["lookup"].items():
            inside = f"{row['server_mean_ms']:11.3f}" if "server_mean_ms" in row else f"{'-':>11}"
            print(
                f"{name:10} {tokens // 1024:>7}K {row['hashes']:7d} {row['p50_ms']:8.3f} {row['p99_ms']:8.3f} "
                f"{inside} {result['load_s']:7.1f}"
            )
    report["host_load_average"] = os.getloadavg()
    print(f"host load average {report['host_load_average'][0]:.1f} on {os.cpu_count()} cores")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


class _Existing:
    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> _Existing:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
