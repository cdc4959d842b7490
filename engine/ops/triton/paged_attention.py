"""Paged decode attention as a Triton kernel (reference: engine/ops/paged_attention.py).

One program per (sequence, query head). It walks the sequence's pages in order, reading each page id
from `block_tables`, and keeps an online softmax (running max, running sum, fp32 accumulator), so the
scores of a long context never exist at once. head_dim is padded to a power of two (`BLOCK_D`) and
masked, so 80, 96 or 256 work; a page is one `BLOCK_N` tile (block_size padded to a power of two).

Scores are a broadcast multiply and a sum rather than `tl.dot`: a decode query is one row, `tl.dot`
needs tiles of at least 16 rows, and fp32 `tl.dot` would silently round through tf32. Decode is bound
by reading K/V; the query heads of one GQA group re-read the same page, which the L2 cache serves.
No autotune: the interpreter that tests this on CPU cannot benchmark.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.ops.paged_attention import check_paged_attention_inputs


@triton.jit
def _paged_attention_decode_kernel(
    q_ptr,
    kv_ptr,
    block_tables_ptr,
    context_lens_ptr,
    out_ptr,
    scale,
    stride_q_b,
    stride_q_h,
    stride_kv_page,
    stride_kv_kind,
    stride_kv_slot,
    stride_kv_head,
    stride_bt_b,
    stride_out_b,
    stride_out_h,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    seq = tl.program_id(0)
    q_head = tl.program_id(1)
    kv_head = q_head // GROUP

    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    slots = tl.arange(0, BLOCK_N)

    q = tl.load(q_ptr + seq * stride_q_b + q_head * stride_q_h + dims, mask=dim_ok, other=0.0)
    q = q.to(tl.float32) * scale
    context_len = tl.load(context_lens_ptr + seq)
    num_blocks = tl.cdiv(context_len, BLOCK_SIZE)

    running_max = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), axis=0)
    running_sum = tl.sum(tl.zeros([BLOCK_N], tl.float32), axis=0)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for block in range(0, num_blocks):
        page = tl.load(block_tables_ptr + seq * stride_bt_b + block).to(tl.int64)
        valid = (slots < BLOCK_SIZE) & (block * BLOCK_SIZE + slots < context_len)
        offsets = (
            page * stride_kv_page + kv_head * stride_kv_head + slots[:, None] * stride_kv_slot + dims[None, :]
        )
        tile_mask = valid[:, None] & dim_ok[None, :]
        keys = tl.load(kv_ptr + offsets, mask=tile_mask, other=0.0).to(tl.float32)
        scores = tl.sum(keys * q[None, :], axis=1)
        scores = tl.where(valid, scores, float("-inf"))
        # Every visited page holds at least one valid token, so new_max is finite.
        new_max = tl.maximum(running_max, tl.max(scores, axis=0))
        rescale = tl.exp(running_max - new_max)
        probs = tl.exp(scores - new_max)
        values = tl.load(kv_ptr + stride_kv_kind + offsets, mask=tile_mask, other=0.0).to(tl.float32)
        acc = acc * rescale + tl.sum(probs[:, None] * values, axis=0)
        running_sum = running_sum * rescale + tl.sum(probs, axis=0)
        running_max = new_max

    out = acc / running_sum
    out_offsets = out_ptr + seq * stride_out_b + q_head * stride_out_h + dims
    tl.store(out_offsets, out.to(out_ptr.dtype.element_ty), mask=dim_ok)


def paged_attention_triton(
    q: torch.Tensor,
    kv_layer: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Launch the kernel; same signature and result as `paged_attention_reference`.

    Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (how the tests run it). Only
    shapes are checked here (values would need a device sync): context_lens must be in
    [1, max_blocks * block_size] and the used block_tables entries valid page ids.
    """
    check_paged_attention_inputs(q, kv_layer, block_tables, context_lens, check_values=False)
    if q.stride(-1) != 1 or kv_layer.stride(-1) != 1:
        raise ValueError("q and kv_layer must be contiguous in head_dim")
    batch, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = kv_layer.shape[2], kv_layer.shape[3]
    out = torch.empty_like(q)
    if batch == 0:
        return out
    block_tables = block_tables.to(torch.int32).contiguous()
    context_lens = context_lens.to(torch.int32).contiguous()
    _paged_attention_decode_kernel[(batch, num_q_heads)](
        q,
        kv_layer,
        block_tables,
        context_lens,
        out,
        float(scale),
        q.stride(0),
        q.stride(1),
        kv_layer.stride(0),
        kv_layer.stride(1),
        kv_layer.stride(2),
        kv_layer.stride(3),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        GROUP=num_q_heads // num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        BLOCK_N=triton.next_power_of_2(block_size),
        BLOCK_D=triton.next_power_of_2(head_dim),
    )
    return out


# The name docs/CONTRACTS.md gives the Triton op.
paged_attention_decode = paged_attention_triton
