"""`python -m bench.decode --spec [K]`: decode with vs without MTP speculation, and the ceiling,
side by side in one run, at batch 1 and 8.

- plain: greedy decode, no speculation;
- MTP: speculation with the checkpoint's trained MTP head (K drafts per step);
- ceiling: the same speculation with always-right drafts (the MTP head still runs, so its cost is
  paid, but its drafts are replaced by the plain run's continuation): the most this head's
  speculation could give on this machine;
- adaptive: the trained head with `adaptive_speculation` (engine/speculative/policy.py): each
  step drafts 0..K tokens, whichever its measured acceptance and step costs say is fastest.

The model is the benchmark model (`engine/training/bench_model.py`: narrow and deep, so a decode
step is bound by per-op overhead as real models' steps on GPUs are, not by arithmetic; trained on
first use, ~20 min, and cached under the user's cache folder) unless `--model` is given (e.g. the
demo's `assets/trained-qwen3_next`); prompts are held-out stdlib code.

"Batch B" is served as a server serves it: each round is a stream of B x WAVES requests at
concurrency B (continuous batching: a finished request's slot goes to the next), timed over the
whole stream. A closed batch of B requests would instead end every B requests in a drain, which
speculation pays and plain decoding does not (its requests all finish at the same step); the
stream pays it once, and the `steady` columns leave it out. Prints a table (tok/s, acceptance
per draft position, mean tokens per verify) and writes bench/results/decode_spec.json.
`spec(...)` is the section a GPU script calls (device=cuda).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.speculative.drafter import Draft, Drafter
from engine.training.evaluate import held_out_prompts

RESULTS = Path(__file__).parent / "results" / "decode_spec.json"
PROMPT_TOKENS = 32
WAVES = 4  # a round is a stream of batch x WAVES requests at concurrency `batch`


def default_model() -> Path:
    from engine.training.bench_model import bench_checkpoint  # lazy: imports the training stack

    return bench_checkpoint()


class AlwaysRightDrafter(Drafter):
    """The real drafter (its cost is paid), whose drafts are then replaced by the known greedy
    continuation of each request: every draft is accepted."""

    def __init__(self, inner: Drafter, reference: dict[str, list[int]]) -> None:
        super().__init__(inner.head)
        self.reference = reference  # request id -> prompt + the plain run's output

    def draft(self, requests) -> list[Draft]:
        drafts = super().draft(requests)
        for r, d in zip(requests, drafts, strict=True):
            truth = self.reference[r.state.seq.request_id]
            known = len(r.token_ids)
            d.tokens = (truth[known : known + r.num_drafts] + [0] * r.num_drafts)[: r.num_drafts]
        return drafts


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass(frozen=True, slots=True)
class DecodeRun:
    tok_s: float  # over the whole stream: every step, prefills and the final drain included
    outputs: dict[str, list[int]]
    step_s: float  # seconds per engine step over the whole stream
    steady_tok_s: float  # over the steps that began with a full batch (requests still queued)


def decode(
    engine: LLMEngine,
    prompts: dict[str, list[int]],
    tokens: int,
    clock: str = "wall",
    batch: int | None = None,
) -> DecodeRun:
    """A stream of requests at concurrency `batch` (default: all of them): every prompt is queued
    at once and the engine (max_num_seqs = batch) admits the next as one finishes — continuous
    batching, as a serving engine runs. Each request decodes `tokens` + 1 tokens. `clock`: "wall",
    or "cpu" (this process's CPU time: what other processes on a shared machine take is not
    counted).

    `tok_s` counts every token over every step. With speculation, requests accept at different
    rates and finish at different steps, so a stream ends in a drain: its last steps run a
    shrinking batch (a closed batch of `batch` requests would drain every `batch` requests).
    `steady_tok_s` leaves the drain out: only the steps that began with at least `batch`
    requests unfinished, which is what a loaded server runs."""
    batch = batch or len(prompts)
    params = SamplingParams(temperature=0.0, max_tokens=tokens + 1, ignore_eos=True)
    for request_id, prompt in prompts.items():
        engine.add_request(request_id, prompt, params)
    out: dict[str, list[int]] = {r: [] for r in prompts}
    now = CLOCKS[clock]
    start, steps, finished = now(), 0, 0
    steady_s, steady_tokens = 0.0, 0
    while engine.has_unfinished_requests():
        steps += 1
        steady = len(prompts) - finished >= batch
        step_start, made = now(), 0
        for o in engine.step():
            out[o.request_id].extend(o.new_token_ids)
            made += len(o.new_token_ids)
            finished += o.finished
        if steady:
            steady_s += now() - step_start
            steady_tokens += made
    elapsed = now() - start
    tok_s = sum(map(len, out.values())) / elapsed
    return DecodeRun(tok_s, out, elapsed / max(steps, 1), steady_tokens / steady_s if steady_s else tok_s)


def measure(model_dir: Path, k: int, batch: int, tokens: int, rounds: int, device: str, clock: str) -> dict:
    per_round = batch * WAVES
    prompts = held_out_prompts(model_dir, per_round * rounds, PROMPT_TOKENS)
    config = EngineConfig(enable_prefix_cache=False, max_num_seqs=batch, device=device)
    speculating = EngineConfig(**{**_fields(config), "num_speculative_tokens": k})
    engines = {
        "plain": LLMEngine(model_dir, config),
        "spec": LLMEngine(model_dir, speculating),
        "ceiling": LLMEngine(model_dir, speculating),
        "adaptive": LLMEngine(
            model_dir, EngineConfig(**{**_fields(speculating), "adaptive_speculation": True})
        ),
    }
    if engines["spec"].spec is None:
        raise SystemExit(f"{model_dir} has no MTP head: nothing to speculate with")
    warm = {"warm": prompts[0]}
    for engine in engines.values():
        decode(engine, warm, 4, clock)
    for name in ("spec", "adaptive"):
        engines[name].spec.metrics.__init__()
    rows: dict[str, list] = {name: [] for name in engines}
    steady_rows: dict[str, list] = {name: [] for name in engines}
    step_s: dict[str, list] = {name: [] for name in engines}
    outputs: dict[str, dict] = {name: {} for name in engines}
    for r in range(rounds):
        group = {f"b{batch}-r{r}-{i}": prompts[r * per_round + i] for i in range(per_round)}
        for name, engine in engines.items():
            if name == "ceiling":
                reference = {rid: group[rid] + outputs["plain"][rid] for rid in group}
                engine.spec.drafter = AlwaysRightDrafter(engine.spec.drafter, reference)
            run = decode(engine, group, tokens, clock, batch)
            rows[name].append(run.tok_s)
            steady_rows[name].append(run.steady_tok_s)
            step_s[name].append(run.step_s)
            outputs[name].update(run.outputs)
    m = engines["spec"].metrics()
    # Medians over rounds (each round runs the engines back to back on the same prompts), so a
    # burst of load from other processes on a shared machine skews one round, not the result.
    tok_s = {name: statistics.median(rows[name]) for name in engines}
    step_ms = {name: 1000 * statistics.median(step_s[name]) for name in engines}
    speedup, ceiling_speedup = tok_s["spec"] / tok_s["plain"], tok_s["ceiling"] / tok_s["plain"]
    adaptive_speedup = tok_s["adaptive"] / tok_s["plain"]
    target = 1 + 0.5 * (ceiling_speedup - 1)
    steady_tok_s = {name: statistics.median(steady_rows[name]) for name in engines}
    steady_speedup, steady_ceiling = (
        steady_tok_s["spec"] / steady_tok_s["plain"],
        steady_tok_s["ceiling"] / steady_tok_s["plain"],
    )
    steady_target = 1 + 0.5 * (steady_ceiling - 1)
    return {
        "batch": batch,
        "requests": per_round * rounds,
        "plain_tok_s": tok_s["plain"],
        "spec_tok_s": tok_s["spec"],
        "ceiling_tok_s": tok_s["ceiling"],
        "adaptive_tok_s": tok_s["adaptive"],
        "speedup": speedup,
        "ceiling_speedup": ceiling_speedup,
        "adaptive_speedup": adaptive_speedup,
        "target_speedup": target,
        "meets_target": speedup >= target,
        "adaptive_meets_target": adaptive_speedup >= target,
        # the same over the steps that began with a full batch, i.e. without the drain (see `decode`)
        "steady_plain_tok_s": steady_tok_s["plain"],
        "steady_spec_tok_s": steady_tok_s["spec"],
        "steady_ceiling_tok_s": steady_tok_s["ceiling"],
        "steady_speedup": steady_speedup,
        "steady_ceiling_speedup": steady_ceiling,
        "steady_target_speedup": steady_target,
        "steady_meets_target": steady_speedup >= steady_target,
        "same_tokens": all(out == outputs["plain"] for out in outputs.values()),
        # ms per engine step: a speculative step (draft + verify + accept) against a plain decode step
        "plain_step_ms": step_ms["plain"],
        "spec_step_ms": step_ms["spec"],
        "ceiling_step_ms": step_ms["ceiling"],
        "adaptive_step_ms": step_ms["adaptive"],
        "acceptance_rate": m["spec_acceptance_rate"],
        "acceptance_per_position": m["spec_acceptance_per_position"],
        "mean_acceptance_length": m["spec_mean_acceptance_length"],
        "ceiling_mean_acceptance_length": engines["ceiling"].metrics()["spec_mean_acceptance_length"],
        "adaptive_steps_by_drafts": engines["adaptive"].metrics()["spec_steps_by_drafts"],
        "state_copies": m["spec_state_copies"],
    }


def spec(
    model_dir: Path | None = None,
    k: int = 2,
    batches: tuple[int, ...] = (1, 8),
    tokens: int = 128,
    rounds: int = 5,
    device: str = "cpu",
    out_path: Path | None = RESULTS,
    clock: str | None = None,
) -> dict:
    """The `spec` section: every batch size, printed as a table; JSON to `out_path`. `clock`:
    "cpu" (default on cpu: process CPU time, robust to other load on a shared machine) or "wall"
    (default on cuda, where the CPU waits on the device)."""
    model_dir = Path(model_dir) if model_dir else default_model()
    clock = clock or ("cpu" if torch.device(device).type == "cpu" else "wall")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, not {clock!r}")
    rows = [measure(model_dir, k, b, tokens, rounds, device, clock) for b in batches]
    result = {
        "model": str(model_dir),
        "device": device,
        "clock": clock,
        "threads": torch.get_num_threads(),
        "num_speculative_tokens": k,
        "tokens_per_request": tokens,
        "rounds": rounds,
        "rows": rows,
    }
    print_table(result)
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def print_table(result: dict) -> None:
    k = result["num_speculative_tokens"]
    print(
        f"model {Path(result['model']).name}  k={k}  {result['tokens_per_request']} tokens/request  "
        f"{result['device']}  clock={result.get('clock', 'wall')}  threads={result['threads']}"
    )
    print(
        f"{'batch':>5} {'plain':>8} {'MTP':>8} {'ceiling':>8} {'speedup':>8} {'ceiling':>8} {'target':>7} "
        f"{'accept/position':>18} {'tok/verify':>10} {'step cost':>9} {'adaptive':>9} {'steps by drafts':>15} "
        f"{'steady: MTP/ceil/target':>24} same"
    )
    for r in result["rows"]:
        per_position = " ".join(f"{a:.0%}" for a in r["acceptance_per_position"])
        cost = r["spec_step_ms"] / r["plain_step_ms"]
        print(
            f"{r['batch']:>5} {r['plain_tok_s']:>8.1f} {r['spec_tok_s']:>8.1f} {r['ceiling_tok_s']:>8.1f} "
            f"{r['speedup']:>7.2f}x {r['ceiling_speedup']:>7.2f}x {r['target_speedup']:>6.2f}x "
            f"{per_position:>18} {r['mean_acceptance_length']:>10.2f} {cost:>8.2f}x "
            f"{r['adaptive_speedup']:>8.2f}x {'/'.join(map(str, r['adaptive_steps_by_drafts'])):>15} "
            f"{_steady(r):>24} {r['same_tokens']}"
        )
    print(
        f"(each batch size: streams of batch x {WAVES} requests at concurrency `batch`, continuous batching; "
        "tok/s over the whole stream, prefills and drain included; speedups vs plain; target = 1 + 0.5 x "
        "(ceiling - 1); step cost = ms per speculative step / ms per plain step; adaptive: "
        "--adaptive-speculation, its decode steps by drafts per sequence 0/1/..; steady: the speedups over "
        "the steps that began with a full batch, i.e. without the stream's final drain)"
    )


def _steady(row: dict) -> str:
    if "steady_speedup" not in row:  # results written before the column existed
        return "-"
    return (
        f"{row['steady_speedup']:.2f}/{row['steady_ceiling_speedup']:.2f}/{row['steady_target_speedup']:.2f}x"
    )


def _fields(config: EngineConfig) -> dict:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}
