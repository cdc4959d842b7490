"""Block-scaled FP8 x FP8 GEMM (W8A8) as a Triton kernel: y = dequant(a) @ dequant(w)^T.

The FP8-tensor-core form of `fp8_block_gemm` (which dequantizes the weight to x's dtype and runs a
bf16 / fp32 dot): both operands stay float8_e4m3fn, the way DeepSeek-V3 and vLLM run Qwen's `-FP8`
checkpoints. `a [M, K]` fp8 with per-token-group scales `a_scale [M, ceil(K / bk)]`
(`engine.ops.fp8.quantize_activation_fp8`); `w [N, K]` fp8 with `w_scale [ceil(N / bn),
ceil(K / bk)]` (bn = 1 is allowed: one scale row per weight row, see `expand_scale_rows`).

One program per (BLOCK_M, BLOCK_N) output tile walks K in BLOCK_K steps (BLOCK_K divides bk, so a
step lies in one scale column): `acc += dot(a_tile, w_tile^T) * a_s[:, None] * w_s[None, :]`, the dot
in fp32 (exact products of e4m3 values, fp32 sums). Edges are masked (zeros add nothing).
Reference: `fp8_w8a8_gemm_reference` (dequantize both, matmul in fp32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.ops.fp8 import FP8_DTYPE, scale_shape


@triton.jit
def _fp8_w8a8_kernel(
    a_ptr,
    as_ptr,
    w_ptr,
    ws_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_am,
    stride_asm,
    stride_wn,
    stride_wsn,
    stride_ym,
    GROUP_N: tl.constexpr,
    GROUP_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < M
    col_ok = cols < N
    scale_rows = cols // GROUP_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + ks
        k_ok = k < K
        a = tl.load(
            a_ptr + rows[:, None] * stride_am + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0
        )
        # The weight tile is read as [BLOCK_K, BLOCK_N] straight from [N, K] (as vLLM's block-FP8
        # kernel does): a K-major B operand, no transpose of an fp8 tile in the kernel.
        w = tl.load(
            w_ptr + cols[None, :] * stride_wn + k[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0
        )
        a_s = tl.load(as_ptr + rows * stride_asm + k0 // GROUP_K, mask=row_ok, other=0.0)
        w_s = tl.load(ws_ptr + scale_rows * stride_wsn + k0 // GROUP_K, mask=col_ok, other=0.0)
        acc += tl.dot(a, w) * a_s[:, None] * w_s[None, :]
    y = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], y, mask=row_ok[:, None] & col_ok[None, :])


def fp8_w8a8_gemm_reference(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    weight: torch.Tensor,
    w_scale: torch.Tensor,
    block: tuple[int, int],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """`sum_g (a_g @ w_g^T) * a_scale[:, g] * w_scale[n // bn, g]` over the 1 x bk column groups g,
    in fp32, in the kernel's order: dequantize-then-matmul, grouped the way the scales are. (The
    products of e4m3 values are exact in fp32, so this matches the kernel to rounding or exactly.)"""
    bn, bk = block
    w_rows = w_scale.to(torch.float32).repeat_interleave(bn, dim=0)[: weight.shape[0]]  # [N, Kb]
    a32, w32, a_scale = a.to(torch.float32), weight.to(torch.float32), a_scale.to(torch.float32)
    out = torch.zeros(a.shape[0], weight.shape[0], dtype=torch.float32, device=a.device)
    for g, k0 in enumerate(range(0, a.shape[1], bk)):
        part = a32[:, k0 : k0 + bk] @ w32[:, k0 : k0 + bk].t()
        out += part * a_scale[:, g : g + 1] * w_rows[:, g]
    return out.to(out_dtype)


def _tiles(m: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) by the row count: decode-sized M gets thin, wide tiles (no autotune: its
    benchmark step needs a GPU, and the interpreter must run the same choice)."""
    if m <= 16:
        return 16, 128
    if m <= 64:
        return 64, 128
    return 128, 128


def fp8_w8a8_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    weight: torch.Tensor,
    w_scale: torch.Tensor,
    block: tuple[int, int],
    out_dtype: torch.dtype,
    block_k: int = 128,
) -> torch.Tensor:
    """`dequant(a [M, K]) @ dequant(weight [N, K])^T → [M, N]` in `out_dtype` (see module doc)."""
    if a.dtype != FP8_DTYPE or weight.dtype != FP8_DTYPE:
        raise ValueError(f"a and weight must be float8_e4m3fn, got {a.dtype} and {weight.dtype}")
    if a.dim() != 2 or weight.dim() != 2 or a.shape[1] != weight.shape[1]:
        raise ValueError(f"shapes do not multiply: a {tuple(a.shape)}, weight {tuple(weight.shape)}")
    if tuple(w_scale.shape) != scale_shape(tuple(weight.shape), block):
        raise ValueError(
            f"w_scale {tuple(w_scale.shape)} does not match weight {tuple(weight.shape)} in {block} blocks"
        )
    if tuple(a_scale.shape) != (a.shape[0], -(-a.shape[1] // block[1])):
        raise ValueError(
            f"a_scale {tuple(a_scale.shape)} does not match a {tuple(a.shape)} in 1x{block[1]} groups"
        )
    block_k = min(block_k, block[1])
    if block[1] % block_k:
        raise ValueError(f"block_k {block_k} must divide the scale block's {block[1]} columns")
    a, weight = a.contiguous(), weight.contiguous()
    a_scale, w_scale = a_scale.to(torch.float32).contiguous(), w_scale.to(torch.float32).contiguous()
    m, k = a.shape
    n = weight.shape[0]
    y = torch.empty(m, n, dtype=out_dtype, device=a.device)
    block_m, block_n = _tiles(m)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _fp8_w8a8_kernel[grid](
        a, a_scale, weight, w_scale, y, m, n, k,
        a.stride(0), a_scale.stride(0), weight.stride(0), w_scale.stride(0), y.stride(0),
        GROUP_N=block[0], GROUP_K=block[1], BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )  # fmt: skip
    return y
