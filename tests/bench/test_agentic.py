"""The served agentic benchmark end to end: `python -m bench.agentic --preset tiny --modes all`, at
a reduced size, in a subprocess, into a temp dir. Its JSON must hold all four modes, real prefix
hits on later turns where the cache is on and none where it is off, and the same greedy tokens for
every (session, turn) in every mode (same prompts -> same tokens, whatever the serving path)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.agentic_modes import MODES, arrival_times
from bench.agentic_report import percentile

REPO = Path(__file__).resolve().parents[2]
REDUCED = [
    "--sessions",
    "2",
    "--turns",
    "3",
    "--first-turn-tokens",
    "384",
    "--turn-tokens",
    "64",
    "--output-tokens",
    "8",
]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_all_modes_side_by_side(tmp_path, tiny_model):
    command = [sys.executable, "-m", "bench.agentic", "--preset", "tiny", "--modes", "all", *REDUCED]
    done = subprocess.run(
        [*command, "--out-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=220
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "agentic_tiny.json").read_text())
    modes = result["modes"]
    assert set(modes) == set(MODES)
    for name, summary in modes.items():
        assert not summary["errors"], (name, summary["errors"])
        assert summary["requests"] == 2 * 3
        assert all(len(t["output"]) == 8 for t in summary["turns"]), name
        later = [t for t in summary["turns"] if t["turn"] > 0]
        if name == "cache_off":
            assert summary["hit_rate"] == 0.0 and all(t["cached_tokens"] == 0 for t in later)
            assert summary["worker_side"]["cached_tokens"] == 0
        else:
            # every later turn resends the previous prompt: most of it must come from a cache
            assert all(t["cached_tokens"] > 0 for t in later), (name, [t["cached_tokens"] for t in later])
            assert summary["hit_rate_later_turns"] > 0.5, name
            assert summary["worker_side"]["cached_tokens"] > 0, name
        assert summary["ttft_p50_s"] > 0 and summary["tpot_p50_s"] > 0
        # usage keeps to the contract (cached <= prompt, fetched a part of cached), and the workers
        # that compute prompts saw exactly the prompts sent (no retries here)
        assert all(
            t["fetched_tokens"] <= t["cached_tokens"] <= t["prompt_tokens"] for t in summary["turns"]
        ), name
        if not summary["client_retries"]:
            assert summary["worker_side"]["prompt_tokens"] == summary["prompt_tokens"], name
            side = summary["worker_side"]
            assert summary["recomputed_tokens"] == side["prompt_tokens"] - side["cached_tokens"] > 0
    check = result["cross_check"]
    assert check["outputs_identical"], check["mismatches"]
    assert len(set(check["digests"].values())) == 1
    # ... and the digest really covers the tokens: the modes' token lists compare equal too
    tokens = {name: [t["output"] for t in s["turns"]] for name, s in modes.items()}
    assert all(v == tokens["colocated"] for v in tokens.values())
    png = tmp_path / "agentic_tiny.png"
    assert png.is_file() and png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_mode_is_a_clear_usage_error():
    done = subprocess.run(
        [sys.executable, "-m", "bench.agentic", "--modes", "colocated,warp"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown mode" in done.stderr and "warp" in done.stderr


def test_arrivals_are_seeded_poisson():
    times = arrival_times(2000, rate=4.0, seed=3)
    assert times == arrival_times(2000, rate=4.0, seed=3)
    assert times[0] == 0.0 and times != arrival_times(2000, rate=4.0, seed=4)
    gaps = np.diff(times)
    assert abs(gaps.mean() - 0.25) < 0.02  # exponential gaps with mean 1 / rate
    assert abs(gaps.std() - 0.25) < 0.03  # ... and std = mean (not a fixed stagger)


def test_percentile_is_nearest_rank():
    rng = random.Random(0)
    for n in (1, 2, 7, 100, 101):
        values = [rng.random() for _ in range(n)]
        for q in (0.5, 0.9, 0.99):
            expected = float(np.percentile(values, 100 * q, method="inverted_cdf"))
            assert percentile(values, q) == pytest.approx(expected)
    assert percentile([], 0.5) is None
