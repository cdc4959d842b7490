"""Causal depthwise conv1d + SiLU over state slots, as Triton kernels (the DeltaNet input mixer).

Reference: `engine.ops.conv.causal_conv1d_prefill` / `causal_conv1d_step` (one sequence / one token
each; the state of a channel is its last K - 1 inputs). Here the state lives in a slot pool
`conv_pool [num_slots, C, K-1]` (`CacheTensors.conv[layer]`) and is updated IN PLACE.

- `causal_conv1d_varlen`: several prefill chunks packed as rows of x `[N, C]` with `cu_seqlens`
  `[S+1]`; grid (sequence, channel tile). A program owns its channels over the whole chunk: it walks
  the chunk in tiles of `BLOCK_T` rows (reading the slot's old state for the first K - 1 taps when
  `has_state`, zeros otherwise), then writes the slot's new state, so no other program reads a state
  it overwrites.
- `causal_conv1d_update`: one token per sequence (decode); grid (sequence, channel tile).
Arithmetic is fp32; outputs take x's dtype, states the pool's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_C = 64
BLOCK_T = 32


@triton.jit
def _conv_varlen_kernel(
    x_ptr, w_ptr, pool_ptr, cu_ptr, slots_ptr, has_state_ptr, out_ptr,
    channels, stride_x, stride_pool_slot, stride_pool_c, stride_out,
    KERNEL: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < channels
    start = tl.load(cu_ptr + seq)
    length = tl.load(cu_ptr + seq + 1) - start
    slot = tl.load(slots_ptr + seq).to(tl.int64)
    # Taps before the chunk read the carried state, or nothing (zeros) for a fresh sequence.
    state_len = tl.where(tl.load(has_state_ptr + seq) != 0, KERNEL - 1, 0)
    state_base = pool_ptr + slot * stride_pool_slot + cs * stride_pool_c  # [C] column 0 of the state
    for t0 in range(0, length, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        acc = tl.zeros([BLOCK_T, BLOCK_C], tl.float32)
        for j in tl.static_range(KERNEL):
            p = ts - (KERNEL - 1) + j  # input position of tap j; < 0 reads the carried state
            from_x = (p >= 0) & (ts < length)
            xv = tl.load(
                x_ptr + (start + p).to(tl.int64)[:, None] * stride_x + cs[None, :],
                mask=from_x[:, None] & c_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            from_state = (p < 0) & (p >= -state_len) & (ts < length)
            sv = tl.load(
                state_base[None, :] + (KERNEL - 1 + p)[:, None],
                mask=from_state[:, None] & c_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            w = tl.load(w_ptr + cs * KERNEL + j, mask=c_ok, other=0.0).to(tl.float32)
            acc += (xv + sv) * w[None, :]
        out = acc * tl.sigmoid(acc)
        out_offsets = (start + ts).to(tl.int64)[:, None] * stride_out + cs[None, :]
        tl.store(
            out_ptr + out_offsets,
            out.to(out_ptr.dtype.element_ty),
            mask=(ts < length)[:, None] & c_ok[None, :],
        )
    # New state: the last K - 1 inputs, from x, or from the old state when the chunk is shorter.
    i = tl.arange(0, BLOCK_S)
    i_ok = i < KERNEL - 1
    p = length - (KERNEL - 1) + i
    xv = tl.load(
        x_ptr + (start + p).to(tl.int64)[:, None] * stride_x + cs[None, :],
        mask=((p >= 0) & i_ok)[:, None] & c_ok[None, :],
        other=0.0,
    )
    sv = tl.load(
        state_base[None, :] + (KERNEL - 1 + p)[:, None],
        mask=((p < 0) & (p >= -state_len) & i_ok)[:, None] & c_ok[None, :],
        other=0.0,
    )
    new_state = xv.to(tl.float32) + sv.to(tl.float32)
    tl.debug_barrier()  # every read of the old state above happens before the overwrite
    tl.store(
        state_base[None, :] + i[:, None],
        new_state.to(pool_ptr.dtype.element_ty),
        mask=i_ok[:, None] & c_ok[None, :],
    )


@triton.jit
def _conv_update_kernel(
    x_ptr, w_ptr, pool_ptr, slots_ptr, out_ptr,
    channels, stride_x, stride_pool_slot, stride_pool_c, stride_out,
    KERNEL: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < channels
    slot = tl.load(slots_ptr + seq).to(tl.int64)
    state_base = pool_ptr + slot * stride_pool_slot + cs * stride_pool_c
    i = tl.arange(0, BLOCK_S)
    i_ok = i < KERNEL - 1
    tile_ok = i_ok[:, None] & c_ok[None, :]
    state = tl.load(state_base[None, :] + i[:, None], mask=tile_ok, other=0.0).to(tl.float32)  # [S, C]
    xv = tl.load(x_ptr + seq * stride_x + cs, mask=c_ok, other=0.0).to(tl.float32)
    w_state = tl.load(w_ptr + cs[None, :] * KERNEL + i[:, None], mask=tile_ok, other=0.0).to(tl.float32)
    w_last = tl.load(w_ptr + cs * KERNEL + (KERNEL - 1), mask=c_ok, other=0.0).to(tl.float32)
    acc = tl.sum(state * w_state, axis=0) + xv * w_last
    out = acc * tl.sigmoid(acc)
    tl.store(out_ptr + seq * stride_out + cs, out.to(out_ptr.dtype.element_ty), mask=c_ok)
    # Shift left by one and append x: new[i] = old[i + 1] for i < K - 2, new[K - 2] = x.
    shifted = tl.load(
        state_base[None, :] + (i + 1)[:, None],
        mask=((i + 1) < KERNEL - 1)[:, None] & c_ok[None, :],
        other=0.0,
    )
    shifted = tl.where((i == KERNEL - 2)[:, None], xv[None, :], shifted.to(tl.float32))
    tl.debug_barrier()
    tl.store(state_base[None, :] + i[:, None], shifted.to(pool_ptr.dtype.element_ty), mask=tile_ok)


def causal_conv1d_varlen(
    x: torch.Tensor,
    weight: torch.Tensor,
    conv_pool: torch.Tensor,
    cu_seqlens: torch.Tensor,
    slots: torch.Tensor,
    has_state: torch.Tensor,
) -> torch.Tensor:
    """x [N, C] (chunks packed by `cu_seqlens` [S+1]), weight [C, K], conv_pool [num_slots, C, K-1],
    slots [S], has_state [S] bool (False: the chunk starts a sequence, state = zeros) → silu(conv)
    [N, C]; each chunk's slot gets its new state in place. Slots must be distinct."""
    channels, kernel = _check(x, weight, conv_pool)
    if cu_seqlens.dim() != 1 or slots.shape != (cu_seqlens.shape[0] - 1,) or has_state.shape != slots.shape:
        raise ValueError(
            f"need cu_seqlens [S+1], slots [S], has_state [S]; got {tuple(cu_seqlens.shape)}, "
            f"{tuple(slots.shape)}, {tuple(has_state.shape)}"
        )
    out = torch.empty_like(x)
    num_seqs = slots.shape[0]
    if num_seqs == 0 or x.shape[0] == 0:
        return out
    _conv_varlen_kernel[(num_seqs, triton.cdiv(channels, BLOCK_C))](
        x, weight, conv_pool, cu_seqlens.to(torch.int32).contiguous(), slots.contiguous(),
        has_state.to(torch.int8).contiguous(), out,
        channels, x.stride(0), conv_pool.stride(0), conv_pool.stride(1), out.stride(0),
        KERNEL=kernel, BLOCK_S=max(2, triton.next_power_of_2(kernel - 1)), BLOCK_C=BLOCK_C, BLOCK_T=BLOCK_T,
    )  # fmt: skip
    return out


def causal_conv1d_update(
    x: torch.Tensor, weight: torch.Tensor, conv_pool: torch.Tensor, slots: torch.Tensor
) -> torch.Tensor:
    """One token per sequence: x [B, C], slots [B] → silu(conv) [B, C]; the slots' states shift in place."""
    channels, kernel = _check(x, weight, conv_pool)
    if slots.shape != (x.shape[0],):
        raise ValueError(f"need slots [B={x.shape[0]}], got {tuple(slots.shape)}")
    if kernel < 2:
        raise ValueError("causal_conv1d_update needs a kernel width >= 2 (a state to carry)")
    out = torch.empty_like(x)
    if x.shape[0] == 0:
        return out
    _conv_update_kernel[(x.shape[0], triton.cdiv(channels, BLOCK_C))](
        x, weight, conv_pool, slots.contiguous(), out,
        channels, x.stride(0), conv_pool.stride(0), conv_pool.stride(1), out.stride(0),
        KERNEL=kernel, BLOCK_S=max(2, triton.next_power_of_2(kernel - 1)), BLOCK_C=BLOCK_C,
    )  # fmt: skip
    return out


def _check(x: torch.Tensor, weight: torch.Tensor, conv_pool: torch.Tensor) -> tuple[int, int]:
    if x.dim() != 2 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"need x [N, C] and weight [C, K]; got {tuple(x.shape)} and {tuple(weight.shape)}")
    channels, kernel = weight.shape
    if conv_pool.dim() != 3 or conv_pool.shape[1:] != (channels, kernel - 1):
        raise ValueError(
            f"conv_pool must be [num_slots, C={channels}, K-1={kernel - 1}], got {tuple(conv_pool.shape)}"
        )
    if x.stride(1) != 1 or conv_pool.stride(2) != 1 or not weight.is_contiguous():
        raise ValueError("x and conv_pool must be contiguous in their last dim, weight contiguous")
    return channels, kernel
