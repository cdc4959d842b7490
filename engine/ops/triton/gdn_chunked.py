"""Chunked gated delta rule (GDN prefill) as one Triton kernel.

Reference: `engine.ops.gdn_chunked.chunk_gated_delta_rule` (same signature, same WY math; see its
docstring). Every column of the state S `[Dk, Dv]` evolves on its own given the keys, so a program
owns one (sequence, head, Dv tile) and walks the chunks in order with its state tile in registers.
Per chunk of C tokens (G = cumsum(g) in the chunk, D[i, j] = exp(G_i - G_j) for j <= i):

    T  = (I + strictly_lower((beta k) k^T * D))^-1      forward substitution, one row at a time
    W  = T (beta k exp(G));  U = T (beta v)              (T, W depend on keys only: recomputed per
    V' = U - W S                                          Dv tile, which is cheap next to the walk)
    O  = (q exp(G)) S + ((q k^T) * D) V'
    S  = exp(G_C) S + (k exp(G_C - G))^T V'

Arithmetic is fp32 (operands upcast; dots with input_precision="ieee"); the output takes v's dtype.
Padding rows past T load k = v = g = beta = 0, which leaves S and the real rows unchanged.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 64
BLOCK_V = 32


@triton.jit
def _gdn_chunked_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, state_in_ptr, state_out_ptr, out_ptr,
    steps, num_heads, scale,
    stride_qk_b, stride_qk_t, stride_qk_h, stride_v_b, stride_v_t, stride_v_h,
    stride_gb_b, stride_gb_t, stride_gb_h, stride_out_b, stride_out_t, stride_out_h,
    DK: tl.constexpr, DV: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, CHUNK: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr,
):  # fmt: skip
    batch_head = tl.program_id(0)
    seq = batch_head // num_heads
    head = batch_head % num_heads
    cols_v = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    v_ok = cols_v < DV
    dims_k = tl.arange(0, BLOCK_K)
    k_ok = dims_k < DK
    rows = tl.arange(0, CHUNK)
    lower = rows[:, None] >= rows[None, :]
    strictly_lower = rows[:, None] > rows[None, :]
    identity = tl.where(rows[:, None] == rows[None, :], 1.0, 0.0)

    state_offsets = batch_head * DK * DV + dims_k[:, None] * DV + cols_v[None, :]
    state_mask = k_ok[:, None] & v_ok[None, :]
    if HAS_INITIAL_STATE:
        state = tl.load(state_in_ptr + state_offsets, mask=state_mask, other=0.0).to(tl.float32)
    else:
        state = tl.zeros([BLOCK_K, BLOCK_V], tl.float32)

    for t0 in range(0, steps, CHUNK):
        ts = t0 + rows
        t_ok = ts < steps
        qk_offsets = seq * stride_qk_b + ts[:, None] * stride_qk_t + head * stride_qk_h + dims_k[None, :]
        qk_mask = t_ok[:, None] & k_ok[None, :]
        q = tl.load(q_ptr + qk_offsets, mask=qk_mask, other=0.0).to(tl.float32) * scale
        k = tl.load(k_ptr + qk_offsets, mask=qk_mask, other=0.0).to(tl.float32)
        v_offsets = seq * stride_v_b + ts[:, None] * stride_v_t + head * stride_v_h + cols_v[None, :]
        v = tl.load(v_ptr + v_offsets, mask=t_ok[:, None] & v_ok[None, :], other=0.0).to(tl.float32)
        gb_offsets = seq * stride_gb_b + ts * stride_gb_t + head * stride_gb_h
        g = tl.load(g_ptr + gb_offsets, mask=t_ok, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + gb_offsets, mask=t_ok, other=0.0).to(tl.float32)

        cum = tl.cumsum(g, axis=0)
        cum_last = tl.sum(g, axis=0)
        decay = tl.where(lower, tl.exp(cum[:, None] - cum[None, :]), 0.0)
        k_beta = k * beta[:, None]
        system = tl.where(strictly_lower, tl.dot(k_beta, tl.trans(k), input_precision="ieee") * decay, 0.0)
        # T = (I + system)^-1 by forward substitution: row i = e_i - system[i, :] @ T (rows < i final).
        inverse = identity
        for i in range(1, CHUNK):
            row_system = tl.sum(tl.where(rows[:, None] == i, system, 0.0), axis=0)  # system[i, :]
            new_row = tl.where(rows == i, 1.0, 0.0) - tl.sum(row_system[:, None] * inverse, axis=0)
            inverse = tl.where(rows[:, None] == i, new_row[None, :], inverse)
        w = tl.dot(inverse, k_beta * tl.exp(cum)[:, None], input_precision="ieee")  # [C, Dk]
        u = tl.dot(inverse, v * beta[:, None], input_precision="ieee")  # [C, BV]
        v_new = u - tl.dot(w, state, input_precision="ieee")
        intra = tl.dot(q, tl.trans(k), input_precision="ieee") * decay
        out = tl.dot(q * tl.exp(cum)[:, None], state, input_precision="ieee")
        out += tl.dot(intra, v_new, input_precision="ieee")
        k_to_end = k * tl.exp(cum_last - cum)[:, None]
        state = state * tl.exp(cum_last) + tl.dot(tl.trans(k_to_end), v_new, input_precision="ieee")

        out_offsets = seq * stride_out_b + ts[:, None] * stride_out_t + head * stride_out_h + cols_v[None, :]
        tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=t_ok[:, None] & v_ok[None, :])
    tl.store(state_out_ptr + state_offsets, state, mask=state_mask)


def chunk_gated_delta_rule_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same signature and result as `engine.ops.gdn_chunked.chunk_gated_delta_rule`: q, k `[B, T, H,
    Dk]` (L2-normed; scaled by Dk**-0.5 here), v `[B, T, H, Dv]`, g and beta `[B, T, H]`, state
    `[B, H, Dk, Dv]` fp32 → (out `[B, T, H, Dv]` in v.dtype, final state fp32). CUDA, or CPU under
    TRITON_INTERPRET=1. `chunk_size`: a power of two >= 16 (tests use 16: the interpreter runs
    the forward substitution's C - 1 steps one by one)."""
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two >= 16, got {chunk_size}")
    batch, steps, heads, dim_k = q.shape
    dim_v = v.shape[-1]
    if k.shape != q.shape or v.shape[:3] != q.shape[:3] or g.shape != q.shape[:3] or beta.shape != g.shape:
        raise ValueError(
            f"need q, k [B, T, H, Dk], v [B, T, H, Dv], g, beta [B, T, H]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}, {tuple(g.shape)}, {tuple(beta.shape)}"
        )
    if initial_state is not None and initial_state.shape != (batch, heads, dim_k, dim_v):
        raise ValueError(
            f"initial_state must be {(batch, heads, dim_k, dim_v)}, got {tuple(initial_state.shape)}"
        )
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    out = torch.empty_like(v)
    state = torch.empty(batch, heads, dim_k, dim_v, dtype=torch.float32, device=q.device)
    if batch * heads == 0:
        return out, state
    state_in = state if initial_state is None else initial_state.to(torch.float32).contiguous()
    block_v = min(BLOCK_V, triton.next_power_of_2(dim_v))
    _gdn_chunked_kernel[(batch * heads, triton.cdiv(dim_v, block_v))](
        q, k, v, g, beta, state_in, state, out,
        steps, heads, dim_k**-0.5,
        q.stride(0), q.stride(1), q.stride(2), v.stride(0), v.stride(1), v.stride(2),
        g.stride(0), g.stride(1), g.stride(2), out.stride(0), out.stride(1), out.stride(2),
        DK=dim_k, DV=dim_v, BLOCK_K=triton.next_power_of_2(dim_k), BLOCK_V=block_v, CHUNK=chunk_size,
        HAS_INITIAL_STATE=initial_state is not None,
        num_warps=8,  # [C, Dk] fp32 tiles (q, k, W) and the [C, C] inverse live in registers
    )  # fmt: skip
    return out, state
