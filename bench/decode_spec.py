"""`python -m bench.decode --spec [K]`: batch-1 decode with vs without MTP speculation, one run.

Uses the small checkpoint with its MTP head trained (`engine.mtp_training`; made once and cached
beside the test checkpoints) unless `--model` is given. Prints acceptance (drafted, accepted, mean
tokens per verify) and tok/s of both engines side by side; writes bench/results/decode_spec.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams

RESULTS = Path(__file__).parent / "results" / "decode_spec.json"
PROMPT_TOKENS = 32


def trained_small_checkpoint() -> Path:
    from engine.mtp_training import trained_copy
    from tests.helpers.checkpoints import cache_root, small_checkpoint

    source = small_checkpoint("qwen3_next")
    return trained_copy(source, cache_root() / f"{source.name}-mtp-trained")


def decode_run(engine: LLMEngine, tokens: int, rounds: int) -> tuple[float, list[int]]:
    """Batch 1: tok/s over the decode phase (after the first token), summed over `rounds` prompts."""
    vocab = engine.model_config.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=tokens + 1, ignore_eos=True)
    elapsed, generated, first_output = 0.0, 0, []
    for r in range(rounds):
        prompt = [(7 * r + 13 * j + 5) % vocab for j in range(PROMPT_TOKENS)]
        engine.add_request(f"spec-bench-{r}", prompt, params)
        out: list[int] = []
        while not out:  # prefill: the first token
            out.extend(t for o in engine.step() for t in o.new_token_ids)
        start = time.perf_counter()
        while engine.has_unfinished_requests():
            out.extend(t for o in engine.step() for t in o.new_token_ids)
        elapsed += time.perf_counter() - start
        generated += len(out) - 1
        if r == 0:
            first_output = out
    return generated / elapsed, first_output


def run_spec_bench(
    model_dir: Path | None, k: int, tokens: int, rounds: int, out_path: Path = RESULTS
) -> dict:
    model_dir = model_dir or trained_small_checkpoint()
    plain = LLMEngine(model_dir, EngineConfig(enable_prefix_cache=False, max_num_seqs=1))
    spec = LLMEngine(
        model_dir, EngineConfig(enable_prefix_cache=False, max_num_seqs=1, num_speculative_tokens=k)
    )
    if spec.spec is None:
        raise SystemExit(f"{model_dir} has no MTP head: nothing to speculate with")
    decode_run(plain, 4, 1)  # warm up both
    decode_run(spec, 4, 1)
    spec.spec.metrics.__init__()
    plain_tok_s, plain_out = decode_run(plain, tokens, rounds)
    spec_tok_s, spec_out = decode_run(spec, tokens, rounds)
    m = spec.metrics()
    result = {
        "model": str(model_dir),
        "num_speculative_tokens": k,
        "tokens_per_request": tokens,
        "rounds": rounds,
        "plain_tok_s": plain_tok_s,
        "spec_tok_s": spec_tok_s,
        "speedup": spec_tok_s / plain_tok_s,
        "same_tokens": plain_out == spec_out,
        **{key: m[key] for key in m if key.startswith("spec_")},
    }
    print(
        f"model {model_dir.name}  k={k}  batch 1  {tokens} tokens x {rounds}\n"
        f"  plain decode       {plain_tok_s:8.1f} tok/s\n"
        f"  MTP speculation    {spec_tok_s:8.1f} tok/s   ({result['speedup']:.2f}x)\n"
        f"  drafted {m['spec_drafted']}, accepted {m['spec_accepted']} "
        f"({m['spec_acceptance_rate']:.1%}), mean acceptance length {m['spec_mean_acceptance_length']:.2f} "
        f"tokens/verify, state copies {m['spec_state_copies']}, same tokens: {result['same_tokens']}"
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    return result
