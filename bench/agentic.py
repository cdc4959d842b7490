"""Multi-turn agentic benchmark: token-weighted prefix-cache hit rate and TTFT of later turns
relative to the first, on the workload of `bench/workload.py`.

Sessions run closed-loop (a session sends its next turn as soon as the previous one finishes) and
start staggered (session i starts when session i-1 has its first token), so their turns overlap.
Modes: `--engine-only` drives one in-process `LLMEngine`; served modes (through the router and
workers) plug in as further `run_*` functions with the same result shape.

`python -m bench.agentic --engine-only --preset tiny|small` prints a table and writes
bench/results/agentic_engine.json."""

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
    return {
        "requests": len(records),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "hit_rate": cached / prompt if prompt else 0.0,
        "ttft_first_turn_mean_s": statistics.mean(first),
        "ttft_later_turns_mean_s": statistics.mean(later) if later else None,
        "ttft_later_over_first": statistics.mean(later) / statistics.mean(first) if later else None,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engine-only", action="store_true", help="drive one in-process engine (the only mode so far)"
    )
    parser.add_argument("--preset", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint dir (default: the preset's)")
    parser.add_argument("--model-type", default="qwen3_next")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--first-turn-tokens", type=int, default=4096)
    parser.add_argument("--turn-tokens", type=int, default=200)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--checkpoint-every-blocks", type=int, default=16)
    parser.add_argument("--no-cache", action="store_true", help="prefix cache off (baseline)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.engine_only:
        parser.error("only --engine-only exists so far")
    model_dir = args.model or checkpoint_dir(args.preset, args.model_type)
    workload = WorkloadConfig(
        sessions=args.sessions,
        turns=args.turns,
        first_turn_tokens=args.first_turn_tokens,
        system_tokens=int(args.first_turn_tokens * 0.75),
        turn_tokens=args.turn_tokens,
        output_tokens=args.output_tokens,
    )
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
        f"TTFT later/first: {ratio:.3f}   wall {result['wall_s']:.1f} s"
    )
    out = args.out or RESULTS_DIR / "agentic_engine.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
