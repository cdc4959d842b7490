"""Multi-turn agentic benchmark: token-weighted prefix-cache hit rate and TTFT of later turns
relative to the first, on the workload of `bench/workload.py`.

Sessions run closed-loop (a session sends its next turn as soon as the previous one finishes) and
start staggered (session i starts when session i-1 has its first token), so their turns overlap.
Modes: `--engine-only` drives one in-process `LLMEngine`; the served modes (`bench/agentic_modes.py`:
colocated, disaggregated, global_index, cache_off) run the workload against a live local cluster
over gRPC, with Poisson session arrivals and a thread per session, one mode after another.

`python -m bench.agentic --engine-only --preset tiny|small` prints a table and writes
bench/results/agentic_engine.json.
`python -m bench.agentic --preset tiny|small --modes all` prints a table per mode and writes
bench/results/agentic_<preset>.json + .png."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.workload import AgenticWorkload, WorkloadConfig

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass(slots=True)
class TurnRecord:
    session: int
    turn: int
    prompt_tokens: int
    cached_tokens: int
    ttft_s: float
    total_s: float


@dataclass(slots=True)
class _Active:
    session: int
    turn: int
    prompt: list[int]
    submitted: float
    first_token_at: float | None = None
    output: list[int] = field(default_factory=list)


def checkpoint_dir(preset: str, model_type: str) -> Path:
    from tests.helpers.checkpoints import small_checkpoint, tiny_checkpoint

    return tiny_checkpoint(model_type) if preset == "tiny" else small_checkpoint(model_type)


def run_engine_only(
    model_dir: Path, workload_config: WorkloadConfig, engine_options: dict
) -> list[TurnRecord]:
    from engine.engine_config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams

    engine = LLMEngine(model_dir, EngineConfig(**engine_options))
    workload = AgenticWorkload(engine.tokenizer, workload_config)
    params = SamplingParams(temperature=0.0, max_tokens=workload_config.output_tokens, ignore_eos=True)
    active: dict[str, _Active] = {}
    records: list[TurnRecord] = []

    def submit(session: int, turn: int, prompt: list[int]) -> None:
        request_id = f"s{session}-t{turn}"
        active[request_id] = _Active(session, turn, prompt, time.perf_counter())
        engine.add_request(request_id, prompt, params)

    submit(0, 0, workload.first_prompt(workload.sessions[0]))
    next_session = 1
    while engine.has_unfinished_requests():
        outputs = engine.step()
        now = time.perf_counter()
        for out in outputs:
            state = active[out.request_id]
            state.output.extend(out.new_token_ids)
            if state.first_token_at is None and out.new_token_ids:
                state.first_token_at = now
                if state.turn == 0 and next_session < len(workload.sessions):
                    submit(next_session, 0, workload.first_prompt(workload.sessions[next_session]))
                    next_session += 1
            if not out.finished:
                continue
            del active[out.request_id]
            records.append(
                TurnRecord(
                    state.session,
                    state.turn,
                    len(state.prompt),
                    out.num_cached_tokens,
                    state.first_token_at - state.submitted,
                    now - state.submitted,
                )
            )
            if state.turn + 1 < workload_config.turns:
                session = workload.sessions[state.session]
                submit(
                    state.session, state.turn + 1, workload.next_prompt(session, state.prompt, state.output)
                )
    return records


def summarize(records: list[TurnRecord]) -> dict:
    prompt = sum(r.prompt_tokens for r in records)
    cached = sum(r.cached_tokens for r in records)
    first = [r.ttft_s for r in records if r.turn == 0]
    later = [r.ttft_s for r in records if r.turn > 0]
    turns = sorted({r.turn for r in records})
    cold = next(r.ttft_s for r in records if r.turn == 0 and r.session == 0)
    return {
        "requests": len(records),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "hit_rate": cached / prompt if prompt else 0.0,
        "ttft_first_turn_mean_s": statistics.mean(first),
        "ttft_later_turns_mean_s": statistics.mean(later) if later else None,
        "ttft_later_over_first": statistics.mean(later) / statistics.mean(first) if later else None,
        # The first turn of the first session finds nothing cached (the others reuse its system prompt).
        "ttft_cold_first_turn_s": cold,
        "ttft_later_over_cold_first": statistics.mean(later) / cold if later else None,
        "per_turn": [
            {
                "turn": t,
                "prompt_tokens_mean": statistics.mean(r.prompt_tokens for r in records if r.turn == t),
                "hit_rate": sum(r.cached_tokens for r in records if r.turn == t)
                / sum(r.prompt_tokens for r in records if r.turn == t),
                "ttft_mean_s": statistics.mean(r.ttft_s for r in records if r.turn == t),
            }
            for t in turns
        ],
    }


PRESETS = {
    # sessions, turns, first-turn tokens, tokens appended per turn, output tokens per turn, arrivals/s
    "tiny": dict(sessions=3, turns=4, first_turn_tokens=1024, turn_tokens=128, output_tokens=16, rate=2.0),
    "small": dict(sessions=4, turns=12, first_turn_tokens=4096, turn_tokens=200, output_tokens=32, rate=0.5),
}
# --engine-only keeps its own defaults whatever the preset (its published numbers used them)
ENGINE_ONLY_DEFAULTS = dict(
    sessions=4, turns=12, first_turn_tokens=4096, turn_tokens=200, output_tokens=32, rate=0.0
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-only", action="store_true", help="drive one in-process engine (no service)")
    parser.add_argument(
        "--modes",
        default="all",
        help="'all' or a comma list of colocated,disaggregated,global_index,cache_off",
    )
    parser.add_argument("--preset", choices=tuple(PRESETS), default="tiny")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint dir (default: the preset's)")
    parser.add_argument("--model-type", default="qwen3_next")
    parser.add_argument("--sessions", type=int, default=None)
    parser.add_argument("--turns", type=int, default=None)
    parser.add_argument("--first-turn-tokens", type=int, default=None)
    parser.add_argument("--turn-tokens", type=int, default=None)
    parser.add_argument("--output-tokens", type=int, default=None)
    parser.add_argument("--rate", type=float, default=None, help="session arrivals per second (Poisson)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transfer", default="tcp", choices=("tcp", "ucx", "local"))
    parser.add_argument("--memory-gb", type=float, default=1.0, help="KV + state budget per worker")
    parser.add_argument("--checkpoint-every-blocks", type=int, default=16, help="engine-only")
    parser.add_argument("--no-cache", action="store_true", help="engine-only: prefix cache off (baseline)")
    parser.add_argument("--out", type=Path, default=None, help="engine-only: the JSON file")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="served modes: where JSON + PNG go")
    parser.add_argument("--from-json", type=Path, default=None, help="re-summarize and re-plot a written run")
    args = parser.parse_args(argv)
    defaults = ENGINE_ONLY_DEFAULTS if args.engine_only else PRESETS[args.preset]
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if (
        min(args.sessions, args.turns, args.output_tokens) < 1
        or args.first_turn_tokens < 64
        or args.turn_tokens < 24
    ):
        parser.error("need sessions, turns, output tokens >= 1, first-turn tokens >= 64, turn tokens >= 24")
    if not args.engine_only:
        from bench.agentic_modes import MODES

        names = (
            list(MODES) if args.modes == "all" else [m.strip() for m in args.modes.split(",") if m.strip()]
        )
        unknown = [m for m in names if m not in MODES]
        if unknown or not names:
            parser.error(
                f"unknown mode(s) {unknown or args.modes!r}; choose from {', '.join(MODES)} or 'all'"
            )
        args.modes = names
    return args


def workload_config(args: argparse.Namespace) -> WorkloadConfig:
    return WorkloadConfig(
        sessions=args.sessions,
        turns=args.turns,
        first_turn_tokens=args.first_turn_tokens,
        system_tokens=int(args.first_turn_tokens * 0.75),
        turn_tokens=args.turn_tokens,
        output_tokens=args.output_tokens,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir = args.model or checkpoint_dir(args.preset, args.model_type)
    if args.engine_only:
        return main_engine_only(args, model_dir)
    return main_served(args, model_dir)


def main_served(args: argparse.Namespace, model_dir: Path) -> int:
    from bench import agentic_report as report
    from bench.agentic_modes import MODES, RunOptions, run_mode

    if args.from_json:
        previous = json.loads(args.from_json.read_text())
        runs = report.load_runs(previous)
        meta = {k: v for k, v in previous.items() if k not in ("modes", "comparisons", "cross_check")}
        return report_served(args, meta, runs)
    workload = workload_config(args)
    options = RunOptions(
        str(model_dir), workload, args.rate, transfer=args.transfer, memory_gb=args.memory_gb
    )
    started = time.perf_counter()
    runs = []
    for name in args.modes:
        print(f"mode {name}: starting the cluster", flush=True)
        runs.append(run_mode(MODES[name], options))
    meta = {
        "preset": args.preset,
        "model": str(model_dir),
        "wall_s": time.perf_counter() - started,
        "workload": asdict(workload),
        "rate_sessions_per_s": args.rate,
        "transfer": args.transfer,
    }
    return report_served(args, meta, runs)


def report_served(args: argparse.Namespace, meta: dict, runs: list) -> int:
    from bench import agentic_report as report

    summaries = {run.mode: report.summarize_mode(run) for run in runs}
    result = {
        **meta,
        "modes": summaries,
        "comparisons": report.comparisons(summaries),
        "cross_check": report.cross_check(summaries),
    }
    print()
    print(report.format_table(summaries))
    for key, value in result["comparisons"].items():
        if value is not None:
            print(f"{key}: {value:.3f}")
    check = result["cross_check"]
    print(f"greedy outputs identical across modes: {check['outputs_identical']}")
    for mode, s in summaries.items():
        for error in s["errors"]:
            print(f"ERROR {mode}: {error}")
        if s["client_retries"]:
            reasons = sorted(set(s["retry_reasons"]))
            print(f"{mode}: {s['client_retries']} turn attempt(s) failed and were retried: {reasons}")
        if s["usage_check"] != "consistent":
            print(f"{mode}: {s['usage_check']}")
    preset, workload = meta["preset"], meta["workload"]
    out_json = args.out_dir / f"agentic_{preset}.json"
    out_png = args.out_dir / f"agentic_{preset}.png"
    report.write_json(out_json, result)
    title = (f"Baton agentic benchmark, {preset} preset: {workload['sessions']} sessions x {workload['turns']} turns, "
             f"~{workload['first_turn_tokens']} + {workload['turn_tokens']}/turn prompt tokens, 2 CPU cores")  # fmt: skip
    report.plot(out_png, summaries, title)
    print(f"wrote {out_json} and {out_png} (run took {result['wall_s']:.0f} s)")
    errors = any(s["errors"] for s in summaries.values())
    return 1 if errors else 0


def main_engine_only(args: argparse.Namespace, model_dir: Path) -> int:
    workload = workload_config(args)
    max_len = args.first_turn_tokens + args.turns * (args.turn_tokens + args.output_tokens + 64)
    engine_options = dict(
        enable_prefix_cache=not args.no_cache,
        max_num_seqs=max(args.sessions, 4),
        checkpoint_every_blocks=args.checkpoint_every_blocks,
        prefill_chunk_size=512,
        max_num_batched_tokens=2048,
        max_model_len=max_len,
        cache_bytes=max(1 << 30, 2 * args.sessions * max_len * 4096),
    )
    started = time.perf_counter()
    records = run_engine_only(model_dir, workload, engine_options)
    summary = summarize(records)
    result = {
        "mode": "engine-only",
        "preset": args.preset,
        "model": str(model_dir),
        "wall_s": time.perf_counter() - started,
        "workload": asdict(workload),
        "engine_options": engine_options,
        **summary,
    }
    print(f"{'turn':>4} {'prompt':>8} {'hit rate':>9} {'TTFT ms':>9}")
    for row in summary["per_turn"]:
        print(
            f"{row['turn']:>4} {row['prompt_tokens_mean']:>8.0f} {row['hit_rate']:>9.1%} {1e3 * row['ttft_mean_s']:>9.1f}"
        )
    ratio = summary["ttft_later_over_first"]
    print(
        f"hit rate (token-weighted, all turns): {summary['hit_rate']:.1%}   "
        f"TTFT later/first: {ratio:.3f} (vs the cold first turn: {summary['ttft_later_over_cold_first']:.3f})   "
        f"wall {result['wall_s']:.1f} s"
    )
    out = args.out or RESULTS_DIR / "agentic_engine.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
