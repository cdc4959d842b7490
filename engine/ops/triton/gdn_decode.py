"""One recurrent Gated DeltaNet decode step (T = 1) as a Triton kernel.

Reference: `engine.ops.gdn_naive.gated_delta_rule` with T = 1, i.e. transformers'
`torch_recurrent_gated_delta_rule` for one token. With q scaled by Dk**-0.5 and S the fp32 state
`[Dk, Dv]` of one value head:

    S = S * exp(g);  kv_mem = k @ S;  delta = (v - kv_mem) * beta;  S = S + outer(k, delta);  o = q @ S

Every column of S evolves on its own (kv_mem, delta and o of column j only read column j), so one
program owns a (batch, value head, Dv tile) and the state tile stays in registers for the step.
Arithmetic is fp32; the output takes v's dtype (as gdn_naive does; q, k, v share one in the model)
and the state stays fp32.

Two ways to hold the state:
- `initial_state` `[B, H, Dk, Dv]` (or None = zeros): returned `final_state` is a new fp32 tensor;
  the input is not modified (the `gated_delta_rule` contract).
- a slot pool: `state_pool` `[num_slots, H, Dk, Dv]` fp32 and `state_slots` `[B]` integer slot ids
  (e.g. `CacheTensors.ssm[layer]` and the sequences' state slots). The step reads row
  `state_pool[state_slots[b]]` and overwrites it IN PLACE with the new state, so the runtime needs no
  gather/scatter; `final_state` returned is `state_pool` itself. Slots must be distinct within a
  batch (two programs writing one slot would race); this is checked on CPU tensors only.

q/k may have fewer heads than v (Hv a multiple of Hk): value head h then uses q/k head
h // (Hv // Hk), as `repeat_interleave` does in the model, so callers may skip that copy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gdn_decode_step_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    g_ptr,
    beta_ptr,
    state_in_ptr,
    state_out_ptr,
    state_rows_ptr,
    out_ptr,
    scale,
    stride_qk_b,
    stride_qk_h,
    stride_v_b,
    stride_v_h,
    stride_gb_b,
    stride_gb_h,
    stride_state_row,
    stride_state_h,
    stride_state_k,
    stride_out_b,
    stride_out_h,
    num_v_heads,
    HEADS_PER_QK: tl.constexpr,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_V: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr,
):
    batch_head = tl.program_id(0)
    v_tile = tl.program_id(1)
    seq = batch_head // num_v_heads
    v_head = batch_head % num_v_heads
    qk_head = v_head // HEADS_PER_QK

    rows_k = tl.arange(0, BLOCK_K)
    cols_v = v_tile * BLOCK_V + tl.arange(0, BLOCK_V)
    k_ok = rows_k < DK
    v_ok = cols_v < DV

    qk_offsets = seq * stride_qk_b + qk_head * stride_qk_h + rows_k
    q = tl.load(q_ptr + qk_offsets, mask=k_ok, other=0.0).to(tl.float32) * scale
    k = tl.load(k_ptr + qk_offsets, mask=k_ok, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + seq * stride_v_b + v_head * stride_v_h + cols_v, mask=v_ok, other=0.0)
    v = v.to(tl.float32)
    g = tl.load(g_ptr + seq * stride_gb_b + v_head * stride_gb_h).to(tl.float32)
    beta = tl.load(beta_ptr + seq * stride_gb_b + v_head * stride_gb_h).to(tl.float32)

    row = tl.load(state_rows_ptr + seq).to(tl.int64)
    state_offsets = (
        row * stride_state_row + v_head * stride_state_h + rows_k[:, None] * stride_state_k + cols_v[None, :]
    )
    tile_ok = k_ok[:, None] & v_ok[None, :]
    if HAS_INITIAL_STATE:
        state = tl.load(state_in_ptr + state_offsets, mask=tile_ok, other=0.0).to(tl.float32)
    else:
        state = tl.zeros([BLOCK_K, BLOCK_V], tl.float32)

    state = state * tl.exp(g)
    kv_mem = tl.sum(state * k[:, None], axis=0)
    delta = (v - kv_mem) * beta
    state = state + k[:, None] * delta[None, :]
    out = tl.sum(state * q[:, None], axis=0)

    tl.store(state_out_ptr + state_offsets, state, mask=tile_ok)
    out_offsets = out_ptr + seq * stride_out_b + v_head * stride_out_h + cols_v
    tl.store(out_offsets, out.to(out_ptr.dtype.element_ty), mask=v_ok)


def gdn_decode_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    *,
    state_slots: torch.Tensor | None = None,
    state_pool: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step; returns (out `[B, 1, Hv, Dv]` in v.dtype, final_state). See module docstring.

    Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1.
    """
    batch, heads_qk, dim_k, heads_v, dim_v = _check_step_shapes(q, k, v, g, beta)
    pool_mode = state_pool is not None or state_slots is not None
    if pool_mode:
        _check_pool(state_pool, state_slots, initial_state, batch, heads_v, dim_k, dim_v)
        state_in = state_out = state_pool
        state_rows = state_slots.to(device=q.device, dtype=torch.int64).contiguous()
    else:
        if initial_state is not None and initial_state.shape != (batch, heads_v, dim_k, dim_v):
            raise ValueError(
                f"initial_state must be [B, H, Dk, Dv] = {(batch, heads_v, dim_k, dim_v)}, "
                f"got {tuple(initial_state.shape)}"
            )
        state_out = torch.empty(batch, heads_v, dim_k, dim_v, dtype=torch.float32, device=q.device)
        state_in = state_out if initial_state is None else initial_state.to(torch.float32).contiguous()
        state_rows = torch.arange(batch, device=q.device, dtype=torch.int64)
    if state_out.stride(-1) != 1 or state_in.stride(-1) != 1:
        raise ValueError("state must be contiguous in Dv")

    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    g, beta = g.contiguous(), beta.contiguous()
    out = torch.empty(batch, 1, heads_v, dim_v, dtype=v.dtype, device=q.device)
    if batch == 0:
        return out, state_out
    # Dv tiles of 32: a 128 x 32 fp32 state tile fits in registers, and batch-1 decode still gets
    # B * Hv * Dv / 32 programs to spread over the SMs.
    block_v = min(triton.next_power_of_2(dim_v), 32)
    grid = (batch * heads_v, triton.cdiv(dim_v, block_v))
    _gdn_decode_step_kernel[grid](
        q, k, v, g, beta,
        state_in, state_out, state_rows, out,
        dim_k**-0.5,
        q.stride(0), q.stride(2),
        v.stride(0), v.stride(2),
        g.stride(0), g.stride(2),
        state_out.stride(0), state_out.stride(1), state_out.stride(2),
        out.stride(0), out.stride(2),
        heads_v,
        HEADS_PER_QK=heads_v // heads_qk,
        DK=dim_k,
        DV=dim_v,
        BLOCK_K=triton.next_power_of_2(dim_k),
        BLOCK_V=block_v,
        HAS_INITIAL_STATE=pool_mode or initial_state is not None,
    )  # fmt: skip
    return out, state_out


def _check_step_shapes(q, k, v, g, beta) -> tuple[int, int, int, int, int]:
    if q.dim() != 4 or q.shape != k.shape:
        raise ValueError(f"q and k must both be [B, 1, H, Dk], got {tuple(q.shape)} and {tuple(k.shape)}")
    batch, steps, heads_qk, dim_k = q.shape
    if steps != 1:
        raise ValueError(f"gdn_decode_step takes exactly one token (T = 1), got T = {steps}")
    if v.dim() != 4 or v.shape[:2] != (batch, 1):
        raise ValueError(f"v must be [B={batch}, 1, Hv, Dv], got {tuple(v.shape)}")
    heads_v, dim_v = v.shape[2], v.shape[3]
    if heads_v % heads_qk != 0:
        raise ValueError(f"value heads {heads_v} must be a multiple of q/k heads {heads_qk}")
    for name, tensor in (("g", g), ("beta", beta)):
        if tensor.shape != (batch, 1, heads_v):
            raise ValueError(f"{name} must be [B, 1, Hv] = {(batch, 1, heads_v)}, got {tuple(tensor.shape)}")
    return batch, heads_qk, dim_k, heads_v, dim_v


def _check_pool(state_pool, state_slots, initial_state, batch, heads_v, dim_k, dim_v) -> None:
    if state_pool is None or state_slots is None:
        raise ValueError("state_pool and state_slots must be given together")
    if initial_state is not None:
        raise ValueError("pass either initial_state or state_pool/state_slots, not both")
    if state_pool.dim() != 4 or state_pool.shape[1:] != (heads_v, dim_k, dim_v):
        raise ValueError(
            f"state_pool must be [num_slots, {heads_v}, {dim_k}, {dim_v}], got {tuple(state_pool.shape)}"
        )
    if state_pool.dtype != torch.float32:
        raise ValueError(f"state_pool must be fp32 (the recurrent state dtype), got {state_pool.dtype}")
    if state_slots.shape != (batch,) or state_slots.dtype.is_floating_point:
        raise ValueError(f"state_slots must be an integer tensor of shape [{batch}], got {state_slots.dtype} "
                         f"{tuple(state_slots.shape)}")  # fmt: skip
    if not state_slots.is_cuda and batch:
        slots = state_slots.long()
        if int(slots.min()) < 0 or int(slots.max()) >= state_pool.shape[0]:
            raise ValueError(f"state_slots out of range [0, {state_pool.shape[0]}): {slots.tolist()}")
        if slots.unique().numel() != batch:
            raise ValueError(f"state_slots must be distinct within a batch: {slots.tolist()}")
