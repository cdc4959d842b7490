"""Fused MoE experts as two grouped Triton GEMMs (reference: `engine.ops.moe.moe_dense_reference`).

1. Align (torch ops on the device, no sync): the N*K (token, k) pairs are sorted by expert and each
   expert's run is padded to a multiple of `BLOCK_M` rows, so every row block belongs to one expert.
   The number of blocks is unknown without reading the counts back, so the grid is sized by an
   upper bound from shapes (`max_padded_rows`); blocks past the used ones read expert -1 and return.
2. `_gate_up_kernel`, grid (row block, I tile): rows gather their token's x, one GEMM against the
   expert's gate and up columns, and SiLU(gate) * up is stored per padded row: `[rows, I]`.
3. `_down_kernel`, grid (row block, H tile): that activation times the expert's down projection,
   times the pair's routing weight, stored at the pair's index; a sum over k gives `[N, H]`.
Padding rows point at pair index N*K (out of range) and are masked on load and store.
Foreign pairs (ids >= E: experts another rank holds, under expert parallelism) get no row at all,
so they cost nothing; their outputs are zeros.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.ops.moe import expert_counts
from engine.ops.triton.dot_config import dot_precision, dot_upcast

BLOCK_M = 16  # rows per block: tl.dot's minimum, and decode routes ~1 row per expert
BLOCK_N = 64
BLOCK_K = 64


def max_padded_rows(num_pairs: int, num_experts: int, block_m: int = BLOCK_M) -> int:
    """Upper bound of the padded row count: each pair adds a row, each used expert < block_m padding."""
    return num_pairs + min(num_pairs, num_experts) * (block_m - 1)


def align_pairs(top_e: torch.Tensor, num_experts: int, block_m: int = BLOCK_M):
    """-> (pair index per padded row [R] int32 (N*K = padding), expert per row block [R / block_m]
    int32 (-1 = unused block)). R = `max_padded_rows` rounded up to block_m; all on the device.
    Pairs with ids >= num_experts (foreign) get no row."""
    num_pairs = top_e.numel()
    device = top_e.device
    flat = top_e.reshape(-1).clamp(max=num_experts)  # foreign pairs: one group, sorted last
    counts = expert_counts(flat, num_experts + 1)
    local = flat < num_experts
    counts, starts = counts[:num_experts], counts.cumsum(0) - counts
    padded_ends = ((counts + block_m - 1) // block_m * block_m).cumsum(0)
    padded_starts = padded_ends - (counts + block_m - 1) // block_m * block_m
    order = torch.argsort(flat, stable=True)
    sorted_e = flat[order]
    rank = torch.arange(num_pairs, device=device) - starts[sorted_e]
    rows = -(-max_padded_rows(num_pairs, num_experts, block_m) // block_m) * block_m
    # One spare entry past the end takes every foreign pair's write, and is cut off.
    pair_of_row = torch.full((rows + 1,), num_pairs, dtype=torch.int32, device=device)
    at = padded_starts[sorted_e.clamp(max=num_experts - 1)] + rank
    pair_of_row[torch.where(local[order], at, rows)] = order.to(torch.int32)
    pair_of_row = pair_of_row[:rows]
    block_first_rows = torch.arange(0, rows, block_m, device=device)
    block_expert = torch.searchsorted(padded_ends, block_first_rows, right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1).to(torch.int32)
    return pair_of_row, block_expert


@triton.jit
def _block_pairs(pair_of_row_ptr, num_pairs, BLOCK_M: tl.constexpr):
    """This program's rows of the expert-sorted pair list, their pair ids, and which hold a pair."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(pair_of_row_ptr + rows)
    return rows, pairs, pairs < num_pairs


@triton.jit
def _gate_up_kernel(
    x_ptr, w_ptr, pair_of_row_ptr, block_expert_ptr, act_ptr,
    num_pairs, hidden, inter,
    stride_x, stride_w_e, stride_w_k, stride_act,
    TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    expert = tl.load(block_expert_ptr + tl.program_id(0))
    if expert < 0:
        return
    rows, pairs, row_ok = _block_pairs(pair_of_row_ptr, num_pairs, BLOCK_M)
    tokens = tl.where(row_ok, pairs // TOP_K, 0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < inter
    dot_dtype = tl.float32 if UPCAST else w_ptr.dtype.element_ty
    w_expert = w_ptr + expert.to(tl.int64) * stride_w_e
    gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < hidden
        a = tl.load(
            x_ptr + tokens[:, None] * stride_x + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0
        )
        w_offsets = ks[:, None] * stride_w_k + cols[None, :]
        w_mask = k_ok[:, None] & col_ok[None, :]
        w_gate = tl.load(w_expert + w_offsets, mask=w_mask, other=0.0).to(dot_dtype)
        w_up = tl.load(w_expert + inter + w_offsets, mask=w_mask, other=0.0).to(dot_dtype)
        a = a.to(dot_dtype)
        gate += tl.dot(a, w_gate, input_precision=PRECISION)
        up += tl.dot(a, w_up, input_precision=PRECISION)
    act = gate * tl.sigmoid(gate) * up
    out_offsets = rows[:, None].to(tl.int64) * stride_act + cols[None, :]
    tl.store(act_ptr + out_offsets, act.to(act_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _down_kernel(
    act_ptr, w_ptr, weight_ptr, pair_of_row_ptr, block_expert_ptr, out_ptr,
    num_pairs, inter, hidden,
    stride_act, stride_w_e, stride_w_k, stride_out,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    expert = tl.load(block_expert_ptr + tl.program_id(0))
    if expert < 0:
        return
    rows, pairs, row_ok = _block_pairs(pair_of_row_ptr, num_pairs, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < hidden
    dot_dtype = tl.float32 if UPCAST else w_ptr.dtype.element_ty
    w_expert = w_ptr + expert.to(tl.int64) * stride_w_e
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, inter, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < inter
        a_offsets = rows[:, None].to(tl.int64) * stride_act + ks[None, :]
        a = tl.load(act_ptr + a_offsets, mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(dot_dtype)
        w_offsets = ks[:, None] * stride_w_k + cols[None, :]
        w = tl.load(w_expert + w_offsets, mask=k_ok[:, None] & col_ok[None, :], other=0.0).to(dot_dtype)
        acc += tl.dot(a, w, input_precision=PRECISION)
    routing = tl.load(weight_ptr + pairs, mask=row_ok, other=0.0).to(tl.float32)
    acc = acc * routing[:, None]
    out_offsets = tl.where(row_ok, pairs, 0).to(tl.int64)[:, None] * stride_out + cols[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def fused_moe_triton(
    x: torch.Tensor,
    top_e: torch.Tensor,
    top_w: torch.Tensor,
    gate_up_t: torch.Tensor,
    down_t: torch.Tensor,
    foreign: bool = False,
) -> torch.Tensor:
    """Same signature and result as `engine.ops.moe.moe_dense_reference` (see engine/ops/moe.py).
    `foreign`: top_e may hold ids >= E (skipped pairs, whose zero outputs are then allocated).

    Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1. The launch count and grid do
    not depend on routing values, so a step needs no sync and a CUDA graph can capture it."""
    _check(x, top_e, top_w, gate_up_t, down_t)
    rows, hidden = x.shape
    top_k = top_e.shape[1]
    num_experts, inter = down_t.shape[0], down_t.shape[1]
    num_pairs = rows * top_k
    if rows == 0:
        return torch.zeros_like(x)
    x, top_w = x.contiguous(), top_w.contiguous()
    gate_up_t, down_t = gate_up_t.contiguous(), down_t.contiguous()
    pair_of_row, block_expert = align_pairs(top_e, num_experts)
    num_blocks = block_expert.shape[0]
    act = torch.empty(pair_of_row.shape[0], inter, dtype=x.dtype, device=x.device)
    precision, upcast = dot_precision(x.dtype), dot_upcast(x.dtype)
    _gate_up_kernel[(num_blocks, triton.cdiv(inter, BLOCK_N))](
        x, gate_up_t, pair_of_row, block_expert, act,
        num_pairs, hidden, inter,
        x.stride(0), gate_up_t.stride(0), gate_up_t.stride(1), act.stride(0),
        TOP_K=top_k, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, PRECISION=precision, UPCAST=upcast,
    )  # fmt: skip
    # Foreign pairs have no row, so nothing writes theirs: zeros (only when there may be some).
    alloc = torch.zeros if foreign else torch.empty
    pairs_out = alloc(num_pairs, hidden, dtype=x.dtype, device=x.device)
    _down_kernel[(num_blocks, triton.cdiv(hidden, BLOCK_N))](
        act, down_t, top_w, pair_of_row, block_expert, pairs_out,
        num_pairs, inter, hidden,
        act.stride(0), down_t.stride(0), down_t.stride(1), pairs_out.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, PRECISION=precision, UPCAST=upcast,
    )  # fmt: skip
    return pairs_out.view(rows, top_k, hidden).sum(dim=1)


def _check(x, top_e, top_w, gate_up_t, down_t) -> None:
    if x.dim() != 2 or top_e.dim() != 2 or top_e.shape != top_w.shape or top_e.shape[0] != x.shape[0]:
        raise ValueError(
            f"need x [N, H], top_e and top_w [N, K]; got {tuple(x.shape)}, {tuple(top_e.shape)}, "
            f"{tuple(top_w.shape)}"
        )
    num_experts, inter, hidden = down_t.shape
    if gate_up_t.shape != (num_experts, hidden, 2 * inter) or hidden != x.shape[1]:
        raise ValueError(
            f"need gate_up_t [E, H, 2I] and down_t [E, I, H] with H = {x.shape[1]}; got "
            f"{tuple(gate_up_t.shape)} and {tuple(down_t.shape)}"
        )
    if top_e.dtype.is_floating_point:
        raise ValueError("top_e must hold integer expert ids")
