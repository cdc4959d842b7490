"""Summaries, the printed table, the JSON and the PNG of the served agentic benchmark."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
from pathlib import Path

from bench.agentic_modes import ModeRun, ServedTurn


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 1]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def tpot(turn: ServedTurn) -> float | None:
    tokens = len(turn.output)
    return (turn.e2e_s - turn.ttft_s) / (tokens - 1) if tokens > 1 else None


def _hit_rate(turns: list[ServedTurn]) -> float:
    prompt = sum(t.prompt_tokens for t in turns)
    return sum(t.cached_tokens for t in turns) / prompt if prompt else 0.0


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def reconcile_usage(run: ModeRun) -> tuple[list[ServedTurn], str]:
    """Per-request usage vs what the computing workers counted. By the contract fetched tokens are
    a part of cached_tokens; if the usage counts them twice (local match of the imported prefix +
    fetched) and the workers' totals prove it, each turn's cached tokens are corrected."""
    side = _worker_side(run)
    usage_cached = sum(t.cached_tokens for t in run.turns)
    fetched = sum(t.fetched_tokens for t in run.turns)
    if usage_cached == side["cached_tokens"]:
        return run.turns, "consistent"
    if fetched and usage_cached - fetched == side["cached_tokens"]:
        fixed = [dataclasses.replace(t, cached_tokens=t.cached_tokens - t.fetched_tokens) for t in run.turns]
        return fixed, "usage counted fetched tokens twice; corrected from the workers' totals"
    return (
        run.turns,
        f"usage cached {usage_cached} != workers' {side['cached_tokens']} (usage counts decode-side hits "
        "the prefill worker still recomputed; workers also count retried attempts)",
    )


def summarize_mode(run: ModeRun) -> dict:
    raw_cached = {(t.session, t.turn): t.cached_tokens for t in run.turns}
    turns, usage_check = reconcile_usage(run)
    ttfts = [t.ttft_s for t in turns]
    tpots = [v for v in (tpot(t) for t in turns) if v is not None]
    cold = [t.ttft_s for t in turns if t.turn == 0]
    cached = [t.ttft_s for t in turns if t.turn > 0]
    output_tokens = sum(len(t.output) for t in turns)
    prompt_tokens = sum(t.prompt_tokens for t in turns)
    reused = sum(t.cached_tokens for t in turns)
    fetched = sum(t.fetched_tokens for t in turns)
    by_turn = sorted({t.turn for t in turns})
    moved = _prefill_moves(turns)
    return {
        "mode": run.mode,
        "requests": len(turns),
        "errors": run.errors,
        "client_retries": len(run.retry_reasons),
        "retry_reasons": run.retry_reasons,
        "wall_s": run.wall_s,
        "ttft_p50_s": percentile(ttfts, 0.5),
        "ttft_p99_s": percentile(ttfts, 0.99),
        "tpot_p50_s": percentile(tpots, 0.5),
        "tpot_p99_s": percentile(tpots, 0.99),
        "output_tokens": output_tokens,
        "output_tokens_per_s": output_tokens / run.wall_s if run.wall_s else 0.0,
        "prompt_tokens": prompt_tokens,
        "cached_tokens": reused,
        "hit_rate": reused / prompt_tokens if prompt_tokens else 0.0,
        "hit_rate_later_turns": _hit_rate([t for t in turns if t.turn > 0]),
        "fetched_tokens": fetched,
        # from the workers: what the engines that compute prompts did not find cached (a decode-side
        # hit the router reports as cached still cost the prefill worker its compute)
        "recomputed_tokens": _worker_side(run)["computed_tokens"],
        "worker_side": _worker_side(run),
        "usage_check": usage_check,
        # None: the workers reported no bytes although prefills were shipped (not counted there)
        "transfer_bytes": run.transfer_bytes or (None if run.prefill_role == "prefill" else 0.0),
        "prefill_worker_changes": moved,
        "ttft_cold_mean_s": _mean(cold),
        "ttft_cached_mean_s": _mean(cached),
        "ttft_cached_over_cold": _mean(cached) / _mean(cold) if cold and cached else None,
        "per_turn": [
            {
                "turn": k,
                "prompt_tokens_mean": _mean([t.prompt_tokens for t in turns if t.turn == k]),
                "hit_rate": _hit_rate([t for t in turns if t.turn == k]),
                "ttft_mean_s": _mean([t.ttft_s for t in turns if t.turn == k]),
                "ttft_p50_s": percentile([t.ttft_s for t in turns if t.turn == k], 0.5),
            }
            for k in by_turn
        ],
        "workers": run.workers,
        "turns": [
            {
                "session": t.session,
                "turn": t.turn,
                "started_s": t.started_s,
                "prompt_tokens": t.prompt_tokens,
                "cached_tokens": t.cached_tokens,
                "usage_cached_tokens": raw_cached[(t.session, t.turn)],  # as the router reported it
                "fetched_tokens": t.fetched_tokens,
                "ttft_s": t.ttft_s,
                "e2e_s": t.e2e_s,
                "prefill_worker": t.prefill_worker,
                "decode_worker": t.decode_worker,
                "output": t.output,
            }  # fmt: skip
            for t in turns
        ],
    }


def _prefill_moves(turns: list[ServedTurn]) -> int:
    """Turns whose prefill ran on another prefill worker than the session's previous turn."""
    previous: dict[int, str] = {}
    moves = 0
    for t in sorted(turns, key=lambda t: (t.session, t.turn)):
        if t.prefill_worker and previous.get(t.session) not in (None, t.prefill_worker):
            moves += 1
        if t.prefill_worker:
            previous[t.session] = t.prefill_worker
    return moves


def _worker_side(run: ModeRun) -> dict:
    """What the workers themselves counted over the run (ListWorkers loads, summed over the workers
    that compute prompts in this mode), a cross-check of the per-request usage: prompt tokens, the
    tokens their engines found cached, and tokens fetched from a peer (prefill workers only)."""
    side = [load for load in run.workers.values() if load["role"] == run.prefill_role]
    prompt = sum(load["prompt_tokens"] for load in side)
    cached = sum(load["cached_tokens"] for load in side)
    return {
        "role": run.prefill_role,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "computed_tokens": prompt - cached,
        "fetched_tokens": sum(load["fetched_tokens"] for load in side),
        "hit_rate": cached / prompt if prompt else 0.0,
    }


def load_runs(result: dict) -> list[ModeRun]:
    """The raw runs back from a written JSON (to re-summarize / re-plot without re-running)."""
    runs = []
    for name, summary in result["modes"].items():
        run = ModeRun(
            name, summary["worker_side"]["role"], wall_s=summary["wall_s"], workers=summary["workers"]
        )
        run.transfer_bytes = summary["transfer_bytes"] or 0.0
        run.errors = list(summary["errors"])
        reasons, count = list(summary.get("retry_reasons", [])), summary.get("client_retries", 0)
        run.retry_reasons = reasons + reasons[-1:] * (count - len(reasons))  # older files kept distinct ones
        for t in summary["turns"]:
            run.turns.append(
                ServedTurn(
                    t["session"],
                    t["turn"],
                    t["started_s"],
                    t["prompt_tokens"],
                    t.get("usage_cached_tokens", t["cached_tokens"]),
                    t["fetched_tokens"],
                    t["ttft_s"],
                    t["e2e_s"],
                    t["output"],
                    t["prefill_worker"],
                    t["decode_worker"],
                    t.get("retries", 0),
                )  # fmt: skip
            )
        runs.append(run)
    return runs


def outputs_digest(summary: dict) -> str:
    outputs = sorted((t["session"], t["turn"], t["output"]) for t in summary["turns"])
    return hashlib.sha256(json.dumps(outputs).encode()).hexdigest()[:16]


def cross_check(summaries: dict[str, dict]) -> dict:
    """Greedy outputs of every (session, turn) compared across modes: they must be identical."""
    outputs = {
        mode: {(t["session"], t["turn"]): t["output"] for t in s["turns"]} for mode, s in summaries.items()
    }
    modes = list(outputs)
    mismatches = []
    if modes:
        reference = outputs[modes[0]]
        for mode in modes[1:]:
            for key in sorted(set(reference) | set(outputs[mode])):
                if reference.get(key) != outputs[mode].get(key):
                    mismatches.append({"mode": mode, "vs": modes[0], "session": key[0], "turn": key[1]})
    return {
        "outputs_identical": not mismatches and all(not s["errors"] for s in summaries.values()),
        "mismatches": mismatches[:20],
        "digests": {mode: outputs_digest(s) for mode, s in summaries.items()},
    }


def comparisons(summaries: dict[str, dict]) -> dict:
    def ratio(a: str, b: str, key: str) -> float | None:
        if a in summaries and b in summaries and summaries[a][key] and summaries[b][key]:
            return summaries[a][key] / summaries[b][key]
        return None

    return {
        "disaggregated_over_colocated_ttft_p50": ratio("disaggregated", "colocated", "ttft_p50_s"),
        "disaggregated_over_colocated_ttft_cold": ratio("disaggregated", "colocated", "ttft_cold_mean_s"),
        "disaggregated_over_colocated_ttft_cached": ratio("disaggregated", "colocated", "ttft_cached_mean_s"),
        "disaggregated_over_colocated_tokens_per_s": ratio(
            "disaggregated", "colocated", "output_tokens_per_s"
        ),
        "disaggregated_over_cache_off_ttft_p50": ratio("disaggregated", "cache_off", "ttft_p50_s"),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{1e3 * value:.0f}"


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:.1f}"


def format_table(summaries: dict[str, dict]) -> str:
    header = (
        f"{'mode':<14}{'TTFT p50':>9}{'p99':>7}{'TPOT p50':>9}{'p99':>6}{'tok/s':>7}{'hit':>7}"
        f"{'hit t>0':>8}{'cached/cold':>12}{'fetched':>9}{'recomputed':>11}{'xfer MB':>8}"
    )
    lines = [header, "-" * len(header)]
    for s in summaries.values():
        ratio = s["ttft_cached_over_cold"]
        lines.append(
            f"{s['mode']:<14}{_ms(s['ttft_p50_s']):>9}{_ms(s['ttft_p99_s']):>7}{_ms(s['tpot_p50_s']):>9}"
            f"{_ms(s['tpot_p99_s']):>6}{s['output_tokens_per_s']:>7.1f}{s['hit_rate']:>7.1%}"
            f"{s['hit_rate_later_turns']:>8.1%}{'-' if ratio is None else f'{ratio:.3f}':>12}"
            f"{s['fetched_tokens']:>9}{s['recomputed_tokens']:>11}{_mb(s['transfer_bytes']):>8}"
        )
    lines.append(
        "(TTFT/TPOT in ms; hit = cached prompt tokens / prompt tokens, all turns; cached/cold = mean TTFT of turns > 0 / turn 0)"
    )
    return "\n".join(lines)


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))


def plot(path: Path, summaries: dict[str, dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ttft, ax_hit) = plt.subplots(1, 2, figsize=(12, 4.5))
    for s in summaries.values():
        turns = [row["turn"] for row in s["per_turn"]]
        ax_ttft.plot(turns, [1e3 * row["ttft_mean_s"] for row in s["per_turn"]], marker="o", label=s["mode"])
        ax_hit.plot(turns, [100 * row["hit_rate"] for row in s["per_turn"]], marker="o", label=s["mode"])
    ax_ttft.set(xlabel="turn", ylabel="TTFT, mean over sessions (ms)", title="Time to first token per turn")
    ax_ttft.set_yscale("log")
    ax_hit.set(
        xlabel="turn", ylabel="prefix hit rate (% of prompt tokens)", title="Prefix-cache hit rate per turn"
    )
    ax_hit.set_ylim(-5, 105)
    for ax in (ax_ttft, ax_hit):
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
