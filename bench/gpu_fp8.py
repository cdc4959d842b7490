"""The opt-in `fp8` section of bench.gpu: decode tok/s of the preset's checkpoint written in Qwen's
block-quantized FP8 layout, run with `fp8_compute=block` (dense linears on the Triton W8A8 GEMM,
`engine/ops/fp8_linear.py`) and with `fp8_compute=dequantize` (bf16 weights), each against its
weights-read bandwidth bound (block reads 1 byte per kept FP8 weight plus its scales).

    python -m bench.gpu --sections prepare,fp8 [--batches 1,16,64]

Prints per batch: tok/s and % of bound for each mode, and block / dequantize. On the CPU (tiny
preset) `block` runs under TRITON_INTERPRET=1: the numbers then only prove the path runs.
"""

from __future__ import annotations

import copy

from bench.decode import weight_traffic
from bench.gpu_timing import measure_copy_bandwidth
from engine.llm_engine import LLMEngine
from engine.models.linear import fp8_linears

MODES = ("dequantize", "block")


def fp8_checkpoint(args):
    """The preset's checkpoint written as FP8 (same preset and seed), cached beside --model-dir."""
    from engine.make_model import make_model  # CLI laziness: only this section writes one

    path = args.model_dir.with_name(args.model_dir.name + "-fp8")
    if not (path / "config.json").exists():
        make_model(path, preset=args.preset, model_type=args.model_type, quant="fp8", progress=True)
    return path


def fp8_section(args) -> dict:
    from bench.gpu_sections import baton_decode_tok_s, make_engine  # cycle: gpu_sections lists this

    fp8_args = copy.copy(args)  # bench.gpu sets TRITON_INTERPRET=1 for a CPU section's process
    fp8_args.model_dir = fp8_checkpoint(args)
    batches = [int(b) for b in args.batches.split(",")]
    bandwidth = measure_copy_bandwidth(args.device)
    rows: dict[int, dict] = {b: {"batch": b} for b in batches}
    weights: dict[str, int] = {}
    for mode in MODES:
        engine = make_engine(fp8_args, max(batches), args.prompt_tokens * max(batches), fp8_compute=mode)
        weight_bytes = _weight_bytes(engine)
        baton_decode_tok_s(engine, fp8_args, 1, 4)  # warm up (kernel compilation, allocator)
        for batch in batches:
            tok_s = baton_decode_tok_s(engine, fp8_args, batch, args.new_tokens)
            rows[batch][f"{mode}_tok_s"] = tok_s
            rows[batch][f"{mode}_bound_tok_s"] = bandwidth / weight_bytes * batch
        weights[mode] = weight_bytes
        del engine
    return {
        "model_dir": str(fp8_args.model_dir),
        "copy_bandwidth_B_s": bandwidth,
        "weight_bytes_per_step_batch1": weights,
        "rows": list(rows.values()),
    }


def _weight_bytes(engine: LLMEngine) -> int:
    """Bytes read per decode step at batch 1: `weight_traffic` (every weight in the model dtype),
    less what the kept FP8 linears save (1 byte per weight, plus fp32 scales)."""
    dense_bytes, _ = weight_traffic(engine)
    item = engine.model.dtype.itemsize
    for linear in fp8_linears(engine.model).values():
        dense_bytes -= linear.weight.numel() * (item - 1) - linear.scale_inv.numel() * 4
    return dense_bytes


def print_fp8(section: dict) -> None:
    print(f"\nfp8 checkpoint {section['model_dir']}: decode tok/s (% of the weights-read bound)")
    print(f"{'batch':>6} {'dequantize':>20} {'block':>20} {'block/deq':>10}")
    for row in section["rows"]:
        cells = [
            f"{row[f'{m}_tok_s']:,.1f} ({100 * row[f'{m}_tok_s'] / row[f'{m}_bound_tok_s']:.1f}%)"
            for m in MODES
        ]
        print(
            f"{row['batch']:>6} {cells[0]:>20} {cells[1]:>20} {row['block_tok_s'] / row['dequantize_tok_s']:>9.2f}x"
        )
