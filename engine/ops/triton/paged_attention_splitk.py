"""Paged decode attention in split-K (flash-decoding) form, as two Triton kernels.

Reference: `engine.ops.paged_attention.paged_attention_reference` (same signature and result).

1. `_splitk_partial_kernel`, grid (sequence, kv head, split): one program owns the query heads of
   one GQA group (they share every K/V tile it reads) and a contiguous range of the sequence's
   context. It walks that range in tiles of `TILE_N` tokens (a tile may span several pages: each
   token's page id is gathered from `block_tables`), keeps an online softmax and writes its partial
   (running max, running sum, unnormalised fp32 accumulator).
2. `_splitk_reduce_kernel`, grid (sequence, query head): rescales the partials to a common max and
   divides; splits past a sequence's length wrote (max=-inf, sum=0) and weigh nothing.

The split count is planned on the host from shapes only (batch, kv heads, `max_blocks`), never from
values, so a step issues no device sync and a CUDA graph can capture it. Scores use a broadcast
`tl.dot`s with the group's heads padded to 16 rows (tensor cores need M >= 16; the padding rows
are free next to the K/V reads that bound decode); see `dot_config.py` for operand dtypes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.ops.paged_attention import check_paged_attention_inputs
from engine.ops.triton.dot_config import dot_precision, dot_upcast

TILE_N = 64  # context tokens per inner iteration
TARGET_PROGRAMS = 512  # enough programs to fill an H100/H200-class GPU (132 SMs) a few times over


@triton.jit
def _splitk_partial_kernel(
    q_ptr,
    kv_ptr,
    block_tables_ptr,
    context_lens_ptr,
    max_ptr,
    sum_ptr,
    acc_ptr,
    scale,
    tokens_per_split,
    stride_q_b,
    stride_q_h,
    stride_kv_page,
    stride_kv_kind,
    stride_kv_slot,
    stride_kv_head,
    stride_bt_b,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    TILE: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    num_q_heads = tl.num_programs(1) * GROUP

    heads = tl.arange(0, GROUP_PAD)
    head_ok = heads < GROUP
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    q_heads = kv_head * GROUP + heads
    q_offsets = seq * stride_q_b + q_heads[:, None] * stride_q_h + dims[None, :]
    q = tl.load(q_ptr + q_offsets, mask=head_ok[:, None] & dim_ok[None, :], other=0.0)
    dot_dtype = tl.float32 if UPCAST else kv_ptr.dtype.element_ty
    q = (q.to(tl.float32) * scale).to(dot_dtype)  # [G, D]

    context_len = tl.load(context_lens_ptr + seq)
    begin = split * tokens_per_split
    end = tl.minimum(begin + tokens_per_split, context_len)

    running_max = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    running_sum = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, BLOCK_D], tl.float32)
    for tile_start in range(begin, end, TILE):
        tokens = tile_start + tl.arange(0, TILE)
        valid = tokens < end
        pages = tl.load(block_tables_ptr + seq * stride_bt_b + tokens // BLOCK_SIZE, mask=valid, other=0)
        rows = pages.to(tl.int64) * stride_kv_page + (tokens % BLOCK_SIZE) * stride_kv_slot
        offsets = rows[:, None] + kv_head * stride_kv_head + dims[None, :]
        tile_mask = valid[:, None] & dim_ok[None, :]
        keys = tl.load(kv_ptr + offsets, mask=tile_mask, other=0.0).to(dot_dtype)  # [N, D]
        scores = tl.dot(q, tl.trans(keys), input_precision=PRECISION)  # [G, N] fp32
        scores = tl.where(valid[None, :], scores, float("-inf"))
        # Every visited tile holds at least one valid token, so new_max is finite.
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        rescale = tl.exp(running_max - new_max)
        probs = tl.exp(scores - new_max[:, None])
        values = tl.load(kv_ptr + stride_kv_kind + offsets, mask=tile_mask, other=0.0).to(dot_dtype)
        acc = acc * rescale[:, None] + tl.dot(probs.to(dot_dtype), values, input_precision=PRECISION)
        running_sum = running_sum * rescale + tl.sum(probs, axis=1)
        running_max = new_max

    partial = (seq * num_q_heads + q_heads) * num_splits + split  # [G] rows of [B, Hq, S]
    tl.store(max_ptr + partial, running_max, mask=head_ok)
    tl.store(sum_ptr + partial, running_sum, mask=head_ok)
    acc_offsets = partial[:, None] * HEAD_DIM + dims[None, :]
    tl.store(acc_ptr + acc_offsets, acc, mask=head_ok[:, None] & dim_ok[None, :])


@triton.jit
def _splitk_reduce_kernel(
    max_ptr,
    sum_ptr,
    acc_ptr,
    out_ptr,
    stride_out_b,
    stride_out_h,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    row = seq * tl.num_programs(1) + head
    splits = tl.arange(0, SPLITS_PAD)
    split_ok = splits < NUM_SPLITS
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    maxes = tl.load(max_ptr + row * NUM_SPLITS + splits, mask=split_ok, other=float("-inf"))
    sums = tl.load(sum_ptr + row * NUM_SPLITS + splits, mask=split_ok, other=0.0)
    overall = tl.max(maxes, axis=0)  # split 0 always holds a token, so this is finite
    weights = tl.where(split_ok & (sums > 0), tl.exp(maxes - overall), 0.0)
    acc_offsets = (row * NUM_SPLITS + splits)[:, None] * HEAD_DIM + dims[None, :]
    accs = tl.load(acc_ptr + acc_offsets, mask=split_ok[:, None] & dim_ok[None, :], other=0.0)
    out = tl.sum(accs * weights[:, None], axis=0) / tl.sum(sums * weights, axis=0)
    out_offsets = out_ptr + seq * stride_out_b + head * stride_out_h + dims
    tl.store(out_offsets, out.to(out_ptr.dtype.element_ty), mask=dim_ok)


def plan_num_splits(batch: int, num_kv_heads: int, max_context: int) -> int:
    """Splits per (sequence, kv head): enough programs to fill the GPU, each at least one tile.

    Uses shapes only (no device values), so it costs no sync and is fixed per graph bucket."""
    max_tiles = max(1, -(-max_context // TILE_N))
    wanted = -(-TARGET_PROGRAMS // max(1, batch * num_kv_heads))
    return max(1, min(wanted, max_tiles, 64))


def paged_attention_splitk(
    q: torch.Tensor,
    kv_layer: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Launch the two kernels; same signature and result as `paged_attention_reference`.

    `num_splits` overrides the plan (tests use it to force several splits on short contexts).
    Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1. Only shapes are checked
    (values would need a device sync): context_lens must be in [1, max_blocks * block_size].
    """
    check_paged_attention_inputs(q, kv_layer, block_tables, context_lens, check_values=False)
    if q.stride(-1) != 1 or kv_layer.stride(-1) != 1:
        raise ValueError("q and kv_layer must be contiguous in head_dim")
    batch, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = kv_layer.shape[2], kv_layer.shape[3]
    out = torch.empty_like(q)
    if batch == 0:
        return out
    max_context = block_tables.shape[1] * block_size
    splits = num_splits or plan_num_splits(batch, num_kv_heads, max_context)
    if splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {splits}")
    tokens_per_split = -(-max_context // splits)
    tokens_per_split = -(-tokens_per_split // TILE_N) * TILE_N
    block_tables = block_tables.to(torch.int32).contiguous()
    context_lens = context_lens.to(torch.int32).contiguous()
    part_max = torch.empty(batch, num_q_heads, splits, dtype=torch.float32, device=q.device)
    part_sum = torch.empty_like(part_max)
    part_acc = torch.empty(batch, num_q_heads, splits, head_dim, dtype=torch.float32, device=q.device)
    group = num_q_heads // num_kv_heads
    block_d = triton.next_power_of_2(head_dim)
    _splitk_partial_kernel[(batch, num_kv_heads, splits)](
        q, kv_layer, block_tables, context_lens, part_max, part_sum, part_acc,
        float(scale), tokens_per_split,
        q.stride(0), q.stride(1),
        kv_layer.stride(0), kv_layer.stride(1), kv_layer.stride(2), kv_layer.stride(3),
        block_tables.stride(0),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_SIZE=block_size, TILE=TILE_N,
        PRECISION=dot_precision(kv_layer.dtype), UPCAST=dot_upcast(kv_layer.dtype),
    )  # fmt: skip
    _splitk_reduce_kernel[(batch, num_q_heads)](
        part_max, part_sum, part_acc, out, out.stride(0), out.stride(1),
        NUM_SPLITS=splits, SPLITS_PAD=triton.next_power_of_2(splits), HEAD_DIM=head_dim, BLOCK_D=block_d,
    )  # fmt: skip
    return out
