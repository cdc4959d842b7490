"""Decode throughput: Baton vs `transformers` generate at batch 1 and 16, beside the two physical
bounds of this model on this machine, in one run.

- bandwidth bound (what limits batch 1): bytes of weights one decode step must read (dense weights,
  the lm head, and the routed experts a token uses) / measured memory copy bandwidth;
- compute bound (what limits large batches): FLOPs per token (2 x active parameters) / measured
  matmul throughput in the model's dtype.

`python -m bench.decode [--model DIR] [--tokens N]` prints a table and writes bench/results/decode.json."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model_config import ModelConfig
from engine.sampling_params import SamplingParams

RESULTS = Path(__file__).parent / "results" / "decode.json"
PROMPT_TOKENS = 32


def measure_copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes moved per second by a large tensor copy (read + write, STREAM convention)."""
    src = torch.ones(megabytes * (1 << 20) // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best


def measure_matmul_flops(dtype: torch.dtype, size: int = 2048, repeats: int = 3) -> float:
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def weight_traffic(engine: LLMEngine) -> tuple[int, int]:
    """(bytes of weights read per decode step at batch 1, FLOPs per token), from the checkpoint's
    tensor headers: dense weights + lm head + the routed experts one token uses (embedding lookups
    read one row; the MTP head is not used)."""
    from safetensors import safe_open

    cfg: ModelConfig = engine.model_config
    routed_fraction = cfg.num_experts_per_tok / cfg.num_experts if cfg.num_experts else 1.0
    item = torch.empty((), dtype=cfg.dtype).element_size()
    active_params = 0
    for path in sorted(engine.model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if name.startswith("mtp.") or ("embed_tokens" in name and not cfg.tie_word_embeddings):
                    continue
                params = 1
                for dim in f.get_slice(name).get_shape():
                    params *= dim
                if ".experts." in name:
                    params = int(params * routed_fraction)
                active_params += params
    return active_params * item, 2 * active_params


def baton_decode(engine: LLMEngine, batch: int, tokens: int) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=tokens + 1, ignore_eos=True)
    vocab = engine.model_config.vocab_size
    for i in range(batch):
        prompt = [(7 * i + 13 * j) % vocab for j in range(PROMPT_TOKENS)]
        engine.add_request(f"bench-{batch}-{i}", prompt, params)
    produced = 0
    while produced < batch:  # prefill: every request gets its first token
        produced += sum(len(o.new_token_ids) for o in engine.step())
    start, generated = time.perf_counter(), 0
    while engine.has_unfinished_requests():
        generated += sum(len(o.new_token_ids) for o in engine.step())
    return generated / (time.perf_counter() - start)


def transformers_decode(model_dir: Path, dtype: torch.dtype, batch: int, tokens: int) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    vocab = model.config.get_text_config().vocab_size
    ids = torch.tensor([[(7 * i + 13 * j) % vocab for j in range(PROMPT_TOKENS)] for i in range(batch)])
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kwargs)  # warm up
        prefill = _timed(lambda: model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs))
        full = _timed(
            lambda: model.generate(ids, max_new_tokens=tokens + 1, min_new_tokens=tokens + 1, **kwargs)
        )
    return batch * tokens / max(full - prefill, 1e-9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="checkpoint dir (default: the small preset)")
    parser.add_argument("--tokens", type=int, default=64, help="decode tokens per request")
    parser.add_argument("--batches", default=None, help="default 1,16 (1,8 with --spec)")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--spec",
        type=int,
        nargs="?",
        const=2,
        default=0,
        metavar="K",
        help="decode with vs without MTP speculation and its ceiling (K drafts, default 2) on the trained "
        "benchmark model (trained and cached on first use; --model overrides); see bench/decode_spec.py",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="--spec: rounds per batch size (median reported)"
    )
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default=None,
        help="--spec: time by process CPU time or wall time (default: cpu on a cpu device, wall on cuda)",
    )
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (see bench/decode_tp.py)")
    parser.add_argument("--ep", type=int, default=1, help="expert-parallel ranks (see bench/decode_tp.py)")
    args = parser.parse_args(argv)
    if args.tp > 1 or args.ep > 1:
        from bench.decode_tp import RESULTS as TP_RESULTS
        from bench.decode_tp import tp_bench
        from tests.helpers.checkpoints import small_checkpoint

        out = TP_RESULTS if args.out == RESULTS else args.out
        batches = [int(b) for b in (args.batches or "1,16").split(",")]
        model = args.model or small_checkpoint("qwen3_next")
        if args.spec and args.model is None:  # a random MTP head drafts nothing worth verifying
            from bench.decode_spec import default_model

            model = default_model()
        tp_bench(model, args.tp, args.ep, batches, args.tokens, out, spec_tokens=args.spec)
        return 0
    if args.spec:
        from bench.decode_spec import RESULTS as SPEC_RESULTS
        from bench.decode_spec import spec

        out = SPEC_RESULTS if args.out == RESULTS else args.out
        batches = tuple(int(b) for b in (args.batches or "1,8").split(","))
        tokens = 128 if args.tokens == 64 else args.tokens  # --spec: longer runs, less timer noise
        spec(args.model, args.spec, batches, tokens, args.rounds, out_path=out, clock=args.clock)
        return 0
    model_dir = args.model
    if model_dir is None:
        from tests.helpers.checkpoints import small_checkpoint

        model_dir = small_checkpoint("qwen3_next")
    batches = [int(b) for b in (args.batches or "1,16").split(",")]
    engine = LLMEngine(model_dir, EngineConfig(enable_prefix_cache=False, max_num_seqs=max(batches)))
    dtype = engine.model_config.dtype
    weight_bytes, flops_per_token = weight_traffic(engine)
    bandwidth, matmul = measure_copy_bandwidth(), measure_matmul_flops(dtype)
    bandwidth_bound, compute_bound = bandwidth / weight_bytes, matmul / flops_per_token
    rows = []
    baton_decode(engine, 1, 4)  # warm up
    for batch in batches:
        baton = baton_decode(engine, batch, args.tokens)
        hf = None if args.skip_transformers else transformers_decode(model_dir, dtype, batch, args.tokens)
        rows.append(
            {
                "batch": batch,
                "baton_tok_s": baton,
                "transformers_tok_s": hf,
                "bandwidth_bound_tok_s": bandwidth_bound * batch,
                "compute_bound_tok_s": compute_bound,
            }
        )
    result = {
        "model": str(model_dir),
        "dtype": str(dtype),
        "threads": torch.get_num_threads(),
        "weight_bytes_per_step_batch1": weight_bytes,
        "flops_per_token": flops_per_token,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "matmul_gflop_s": matmul / 1e9,
        "rows": rows,
    }
    print(
        f"model {model_dir.name}  {dtype}  weights read/step {weight_bytes / 1e6:.1f} MB  "
        f"copy bw {bandwidth / 1e9:.1f} GB/s  matmul {matmul / 1e9:.1f} GFLOP/s"
    )
    print(f"{'batch':>5} {'baton':>10} {'transformers':>13} {'bw bound':>10} {'compute bound':>14}  (tok/s)")
    for r in rows:
        hf = f"{r['transformers_tok_s']:.1f}" if r["transformers_tok_s"] is not None else "-"
        bound = min(r["bandwidth_bound_tok_s"], r["compute_bound_tok_s"])
        print(
            f"{r['batch']:>5} {r['baton_tok_s']:>10.1f} {hf:>13} {r['bandwidth_bound_tok_s']:>10.1f} "
            f"{r['compute_bound_tok_s']:>14.1f}  ({100 * r['baton_tok_s'] / bound:.0f}% of the tighter bound)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
