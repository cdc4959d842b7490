"""Block-scaled FP8 weight GEMM (Triton, engine/ops/triton/fp8_block_gemm.py) vs a bf16 matmul of the
same dequantized weight, with the bound each is measured against; and the model's FP8 linear
(`Fp8BlockLinear`: activation quantization + the W8A8 GEMM on FP8 tensor cores, two launches).

    python -m bench.fp8_gemm [--device cuda] [--out bench/results/fp8_gemm.json]
    TRITON_INTERPRET=1 python -m bench.fp8_gemm --device cpu      # tiny shapes, checks the script

Weight-bound decode shapes (M = tokens in the batch) read N x K fp8 bytes + scales: the bound is
those bytes / copy bandwidth (measured here with a device copy). Every row also checks the kernel
against dequantize-then-matmul.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from engine.ops.fp8 import dequantize_block_fp8, quantize_block_fp8
from engine.ops.fp8_linear import Fp8BlockLinear
from engine.ops.triton.fp8_block_gemm import fp8_block_gemm, fp8_block_gemm_reference

GPU_SHAPES = [(m, 2048, 2048) for m in (1, 16, 64, 256)] + [(m, 4096, 1024) for m in (1, 64)]
CPU_SHAPES = [(2, 256, 256), (16, 128, 384)]
BLOCK = (128, 128)


def timed(fn, iters: int, sync) -> float:
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def copy_bandwidth(device: str, sync) -> float:
    src = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), 5, sync)
    return 2 * src.numel() / seconds  # read + write


def measure(
    m: int, n: int, k: int, device: str, dtype: torch.dtype, iters: int, sync, bandwidth: float
) -> dict:
    gen = torch.Generator().manual_seed(m + n + k)
    weight, scale = quantize_block_fp8(torch.randn(n, k, generator=gen) * 0.02, BLOCK)
    weight, scale = weight.to(device), scale.to(device)
    x = torch.randn(m, k, generator=gen).to(device, dtype)
    dense_t = dequantize_block_fp8(weight, scale, BLOCK, dtype).t().contiguous()
    got = fp8_block_gemm(x, weight, scale, BLOCK).float()
    error = (got - fp8_block_gemm_reference(x, weight, scale, BLOCK).float()).abs().max().item()
    fp8_s = timed(lambda: fp8_block_gemm(x, weight, scale, BLOCK), iters, sync)
    dense_s = timed(lambda: x @ dense_t, iters, sync)
    linear = Fp8BlockLinear(weight, scale, BLOCK)
    w8a8_s = timed(lambda: linear(x), iters, sync)
    w8a8_error = (linear(x).float() - linear.reference(x).float()).abs().max().item()
    bound_s = (weight.numel() + scale.numel() * 4) / bandwidth
    return {"m": m, "n": n, "k": k, "fp8_us": fp8_s * 1e6, "dense_us": dense_s * 1e6,
            "w8a8_linear_us": w8a8_s * 1e6, "bound_us": bound_s * 1e6, "max_abs_err": error,
            "w8a8_max_abs_err": w8a8_error}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", default=None, help="JSON results (default: print only)")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    dtype = torch.bfloat16 if cuda else torch.float32
    bandwidth = copy_bandwidth(args.device, sync)
    rows = []
    print(f"device {args.device}, copy bandwidth {bandwidth / 1e9:.0f} GB/s, block {BLOCK}")
    print(
        "| M | N | K | fp8 Triton us | dense matmul (x dtype) us | W8A8 linear us | fp8 weight-read bound us "
        "| max abs err vs reference | W8A8 err vs reference |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for m, n, k in GPU_SHAPES if cuda else CPU_SHAPES:
        row = measure(m, n, k, args.device, dtype, args.iters if cuda else 1, sync, bandwidth)
        rows.append(row)
        print(f"| {m} | {n} | {k} | {row['fp8_us']:.1f} | {row['dense_us']:.1f} | {row['w8a8_linear_us']:.1f} | "
              f"{row['bound_us']:.2f} | {row['max_abs_err']:.2e} | {row['w8a8_max_abs_err']:.2e} |")  # fmt: skip
    if args.out:
        Path(args.out).write_text(
            json.dumps({"device": args.device, "bandwidth": bandwidth, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
