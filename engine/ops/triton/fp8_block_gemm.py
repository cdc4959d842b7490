"""Block-scaled FP8 weight GEMM as a Triton kernel: y = x @ dequant(w)^T.

`w` is float8_e4m3fn `[N, K]` with fp32 `scale_inv` `[ceil(N / bn), ceil(K / bk)]` (Qwen's `-FP8`
layout, see `engine/ops/fp8.py`); x is `[M, K]` in fp32 / bf16 / fp16; y is `[M, N]` in x's dtype.
torch's `_scaled_mm` refuses 128x128 block scales (docs GPU.md), hence this kernel.

One program per (BLOCK_M, BLOCK_N) output tile; it walks K in BLOCK_K steps (BLOCK_K divides bk, so
one k-step lies in one scale column), loads the fp8 tile, scales each row by its block's scale,
casts to x's dtype and accumulates `tl.dot` in fp32. Edges (M, N, K not multiples of the tiles,
scale blocks cut short) are masked. fp32 inputs use `input_precision="ieee"` so the result is not
rounded through tf32. Reference: `fp8_block_gemm_reference` (dequantize, then matmul).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.ops.fp8 import FP8_DTYPE, dequantize_block_fp8, scale_shape


@triton.jit
def _fp8_block_gemm_kernel(
    x_ptr,
    w_ptr,
    s_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_sn,
    stride_ym,
    BLOCK_SCALE_N: tl.constexpr,
    BLOCK_SCALE_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < M
    col_ok = cols < N
    scale_rows = cols // BLOCK_SCALE_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + ks
        k_ok = k < K
        x = tl.load(
            x_ptr + rows[:, None] * stride_xm + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0
        )
        w = tl.load(
            w_ptr + cols[:, None] * stride_wn + k[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0
        )
        scale = tl.load(s_ptr + scale_rows * stride_sn + k0 // BLOCK_SCALE_K, mask=col_ok, other=0.0)
        w_scaled = (w.to(tl.float32) * scale[:, None]).to(x.dtype)
        if IEEE:
            acc += tl.dot(x, tl.trans(w_scaled), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w_scaled))
    y = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], y, mask=row_ok[:, None] & col_ok[None, :])


def fp8_block_gemm_reference(
    x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]
) -> torch.Tensor:
    """Dequantize, then matmul (fp32 accumulate); `[M, K] x [N, K]^T → [M, N]` in x's dtype."""
    w = dequantize_block_fp8(weight, scale_inv, block, x.dtype)
    return (x.float() @ w.float().t()).to(x.dtype)


def fp8_block_gemm(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int],
    block_m: int = 16,
    block_n: int = 64,
    block_k: int = 64,
) -> torch.Tensor:
    """`x [M, K] @ dequant(weight [N, K], scale_inv)^T → [M, N]` in x's dtype (see module doc)."""
    if weight.dtype != FP8_DTYPE:
        raise ValueError(f"weight must be float8_e4m3fn, got {weight.dtype}")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"shapes do not multiply: x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    if tuple(scale_inv.shape) != scale_shape(tuple(weight.shape), block):
        raise ValueError(
            f"scale_inv {tuple(scale_inv.shape)} does not match weight {tuple(weight.shape)} in {block} blocks"
        )
    block_k = min(block_k, block[1])
    if block[1] % block_k:
        raise ValueError(f"block_k {block_k} must divide the scale block's {block[1]} columns")
    x, weight = x.contiguous(), weight.contiguous()
    scale_inv = scale_inv.to(torch.float32).contiguous()
    m, k = x.shape
    n = weight.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _fp8_block_gemm_kernel[grid](
        x, weight, scale_inv, y, m, n, k,
        x.stride(0), weight.stride(0), scale_inv.stride(0), y.stride(0),
        BLOCK_SCALE_N=block[0], BLOCK_SCALE_K=block[1],
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        IEEE=x.dtype == torch.float32,
    )  # fmt: skip
    return y
