"""Extend (chunked-prefill) attention over paged KV as one Triton kernel.

Reference and shapes: `engine.ops.paged_extend.paged_extend_reference`. Grid (chunk, query tile,
kv head): a program takes `BLOCK_M` query tokens of one chunk and all query heads of one GQA group
(flattened to `BLOCK_M * GROUP_PAD` rows, so the group shares every K/V tile), and walks the keys
[0, last position of its tile] in tiles of `BLOCK_N` tokens gathered through the block table, with
an online softmax. Masks: key position <= query position (full over the cached prefix, causal in the
chunk). The query-tile count comes from the longest chunk, which the host knows when it builds the
batch (an argument, never read back from the device); tiles past a chunk's end return at once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.ops.triton.dot_config import dot_precision, dot_upcast

ROWS = 64  # query rows (tokens x heads of the group) per program
BLOCK_N = 32  # keys per inner iteration


@triton.jit
def _paged_extend_kernel(
    q_ptr, kv_ptr, block_tables_ptr, cu_ptr, start_pos_ptr, out_ptr,
    scale,
    stride_q_t, stride_q_h, stride_kv_page, stride_kv_kind, stride_kv_slot, stride_kv_head, stride_bt,
    stride_out_t, stride_out_h,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0)
    tile = tl.program_id(1)
    kv_head = tl.program_id(2)
    begin = tl.load(cu_ptr + seq)
    length = tl.load(cu_ptr + seq + 1) - begin
    if tile * BLOCK_M >= length:
        return
    prefix = tl.load(start_pos_ptr + seq)

    rows = tl.arange(0, BLOCK_M * GROUP_PAD)
    token = tile * BLOCK_M + rows // GROUP_PAD  # index inside the chunk
    head = kv_head * GROUP + rows % GROUP_PAD
    row_ok = (token < length) & (rows % GROUP_PAD < GROUP)
    q_pos = prefix + token
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    dot_dtype = tl.float32 if UPCAST else kv_ptr.dtype.element_ty
    q_offsets = (
        (begin + token).to(tl.int64)[:, None] * stride_q_t + head[:, None] * stride_q_h + dims[None, :]
    )
    q = tl.load(q_ptr + q_offsets, mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    q = (q.to(tl.float32) * scale).to(dot_dtype)

    running_max = tl.full([BLOCK_M * GROUP_PAD], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_M * GROUP_PAD], tl.float32)
    acc = tl.zeros([BLOCK_M * GROUP_PAD, BLOCK_D], tl.float32)
    key_end = prefix + tl.minimum((tile + 1) * BLOCK_M, length)  # keys the tile's last query sees
    for n0 in range(0, key_end, BLOCK_N):
        keys_pos = n0 + tl.arange(0, BLOCK_N)
        key_ok = keys_pos < key_end
        pages = tl.load(block_tables_ptr + seq * stride_bt + keys_pos // BLOCK_SIZE, mask=key_ok, other=0)
        kv_rows = pages.to(tl.int64) * stride_kv_page + (keys_pos % BLOCK_SIZE) * stride_kv_slot
        offsets = kv_rows[:, None] + kv_head * stride_kv_head + dims[None, :]
        tile_mask = key_ok[:, None] & dim_ok[None, :]
        k = tl.load(kv_ptr + offsets, mask=tile_mask, other=0.0).to(dot_dtype)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # [R, N]
        visible = (keys_pos[None, :] <= q_pos[:, None]) & key_ok[None, :]
        scores = tl.where(visible, scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        # Rows that have seen no key yet (padding rows) keep a -inf max: shift by 0 instead.
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        rescale = tl.exp(running_max - safe_max)
        probs = tl.exp(scores - safe_max[:, None])
        v = tl.load(kv_ptr + stride_kv_kind + offsets, mask=tile_mask, other=0.0).to(dot_dtype)
        acc = acc * rescale[:, None] + tl.dot(probs.to(dot_dtype), v, input_precision=PRECISION)
        running_sum = running_sum * rescale + tl.sum(probs, axis=1)
        running_max = new_max

    out = acc / tl.where(running_sum > 0, running_sum, 1.0)[:, None]
    out_offsets = (
        (begin + token).to(tl.int64)[:, None] * stride_out_t + head[:, None] * stride_out_h + dims[None, :]
    )
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


def paged_extend_triton(
    q: torch.Tensor,
    kv_layer: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens: torch.Tensor,
    start_pos: torch.Tensor,
    scale: float,
    max_chunk_len: int,
) -> torch.Tensor:
    """Same result as `paged_extend_reference`; `max_chunk_len` (the longest chunk, known on the
    host) sizes the grid. Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1."""
    if q.dim() != 3 or kv_layer.dim() != 5 or kv_layer.shape[1] != 2 or kv_layer.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"need q [T, Hq, D] and kv_layer [pages, 2, block, Hkv, D]; got {tuple(q.shape)}, {tuple(kv_layer.shape)}"
        )
    num_seqs = block_tables.shape[0]
    if cu_seqlens.shape != (num_seqs + 1,) or start_pos.shape != (num_seqs,):
        raise ValueError(
            f"need cu_seqlens [S+1] and start_pos [S] for S={num_seqs} block-table rows; got "
            f"{tuple(cu_seqlens.shape)}, {tuple(start_pos.shape)}"
        )
    _, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = kv_layer.shape[2], kv_layer.shape[3]
    if num_q_heads % num_kv_heads:
        raise ValueError(f"num q heads {num_q_heads} is not a multiple of num kv heads {num_kv_heads}")
    if q.stride(-1) != 1 or kv_layer.stride(-1) != 1:
        raise ValueError("q and kv_layer must be contiguous in head_dim")
    out = torch.empty_like(q)
    if num_seqs == 0 or max_chunk_len == 0:
        return out
    group = num_q_heads // num_kv_heads
    group_pad = triton.next_power_of_2(group)
    block_m = max(1, ROWS // group_pad)
    block_tables = block_tables.to(torch.int32).contiguous()
    grid = (num_seqs, triton.cdiv(max_chunk_len, block_m), num_kv_heads)
    _paged_extend_kernel[grid](
        q, kv_layer, block_tables, cu_seqlens.to(torch.int32).contiguous(),
        start_pos.to(torch.int32).contiguous(), out,
        float(scale),
        q.stride(0), q.stride(1),
        kv_layer.stride(0), kv_layer.stride(1), kv_layer.stride(2), kv_layer.stride(3), block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=group_pad, BLOCK_M=block_m, BLOCK_N=BLOCK_N,
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_SIZE=block_size,
        PRECISION=dot_precision(kv_layer.dtype), UPCAST=dot_upcast(kv_layer.dtype),
        num_warps=8,  # a [64, head_dim] fp32 accumulator per program
    )  # fmt: skip
    return out
