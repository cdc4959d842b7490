"""Decode attention over a paged KV cache: a readable reference, a vectorized torch path, a dispatcher.

Shapes (one layer; see docs/CONTRACTS.md "engine/ops"):

    q             [B, Hq, D]                              one decode token per sequence
    kv_layer      [num_pages, 2, block_size, Hkv, D]      index 0 = K, 1 = V
    block_tables  [B, max_blocks] int32                   page ids; entries past the used blocks are
                                                           padding (-1 or any id) and are never read
    context_lens  [B] int32                               tokens to attend to, already including the
                                                           decode token's own KV (so >= 1)
    -> out        [B, Hq, D] in q.dtype

GQA: query head h reads kv head h // (Hq // Hkv), as `repeat_interleave` on the kv heads does.
Scores and softmax are computed in fp32 whatever the storage dtype.
"""

from __future__ import annotations

import torch

from engine.ops.dispatch import use_triton


def paged_attention_reference(
    q: torch.Tensor,
    kv_layer: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Token-by-page loop anyone can read: gather each sequence's pages, repeat kv heads, softmax."""
    check_paged_attention_inputs(q, kv_layer, block_tables, context_lens, check_values=True)
    batch, num_q_heads, _ = q.shape
    block_size, num_kv_heads = kv_layer.shape[2], kv_layer.shape[3]
    group = num_q_heads // num_kv_heads
    out = torch.empty_like(q)
    for b in range(batch):
        length = int(context_lens[b])
        num_blocks = -(-length // block_size)
        pages = block_tables[b, :num_blocks].long()
        keys = kv_layer[pages, 0].reshape(-1, num_kv_heads, kv_layer.shape[-1])[:length]
        values = kv_layer[pages, 1].reshape(-1, num_kv_heads, kv_layer.shape[-1])[:length]
        keys = keys.float().repeat_interleave(group, dim=1)  # [L, Hq, D]
        values = values.float().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,lhd->hl", q[b].float(), keys) * scale
        probs = torch.softmax(scores, dim=-1)
        out[b] = torch.einsum("hl,lhd->hd", probs, values).to(q.dtype)
    return out


def paged_attention_torch(
    q: torch.Tensor,
    kv_layer: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    *,
    validate: bool = True,
) -> torch.Tensor:
    """Whole batch at once: one index_select of the used pages, masked fp32 softmax.

    Gathers every column of `block_tables` (the host plans its width as the blocks the longest
    sequence needs), so the cost follows that bound and no length is read back from the device;
    the padding positions are masked out before the softmax. `validate=False` skips the value
    checks (they read the tensors back) for callers that validated on the host.
    """
    check_paged_attention_inputs(
        q, kv_layer, block_tables, context_lens, check_values=validate and not q.is_cuda
    )
    batch, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = kv_layer.shape[2], kv_layer.shape[3]
    group = num_q_heads // num_kv_heads
    if batch == 0:
        return torch.empty_like(q)
    num_blocks = block_tables.shape[1]
    # Padding entries may be -1: clamp so the gather stays in bounds; the mask hides what it reads.
    pages = block_tables[:, :num_blocks].long().clamp(min=0).reshape(-1)
    # Gathering K and V separately lands each directly in a contiguous [B, T, Hkv, D] (no second copy).
    gathered_shape = (batch, num_blocks * block_size, num_kv_heads, head_dim)
    keys = kv_layer[:, 0].index_select(0, pages).view(gathered_shape).float()
    values = kv_layer[:, 1].index_select(0, pages).view(gathered_shape).float()
    grouped_q = q.float().view(batch, num_kv_heads, group, head_dim)
    scores = torch.einsum("bkgd,btkd->bkgt", grouped_q, keys) * scale
    positions = torch.arange(num_blocks * block_size, device=q.device)
    padding = positions[None, :] >= context_lens.to(q.device).long()[:, None]  # [B, T]
    scores.masked_fill_(padding[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bkgt,btkd->bkgd", probs, values)
    return out.reshape(batch, num_q_heads, head_dim).to(q.dtype)


def paged_attention_decode(
    q: torch.Tensor,
    kv_layer: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    *,
    validate: bool = True,
) -> torch.Tensor:
    """The op the model calls: the split-K Triton kernels on CUDA tensors, the torch path on CPU.
    The model passes `validate=False`: `build_forward_batch` checked the tables on the host."""
    if use_triton(q):
        from engine.ops.triton.paged_attention_splitk import (
            paged_attention_splitk,  # cycle: it imports this module
        )

        return paged_attention_splitk(q, kv_layer, block_tables, context_lens, scale)
    return paged_attention_torch(q, kv_layer, block_tables, context_lens, scale, validate=validate)


def check_paged_attention_inputs(
    q: torch.Tensor,
    kv_layer: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    *,
    check_values: bool,
) -> None:
    """Raise ValueError on misshapen input. `check_values` also reads lengths and page ids, which
    costs a device sync, so the GPU path checks shapes only."""
    if q.dim() != 3:
        raise ValueError(f"q must be [B, Hq, D], got shape {tuple(q.shape)}")
    if kv_layer.dim() != 5 or kv_layer.shape[1] != 2:
        raise ValueError(f"kv_layer must be [num_pages, 2, block_size, Hkv, D], got {tuple(kv_layer.shape)}")
    batch, num_q_heads, head_dim = q.shape
    num_pages, _, block_size, num_kv_heads, kv_head_dim = kv_layer.shape
    if kv_head_dim != head_dim:
        raise ValueError(f"head_dim mismatch: q has {head_dim}, kv_layer has {kv_head_dim}")
    if num_q_heads % num_kv_heads != 0:
        raise ValueError(f"num q heads {num_q_heads} is not a multiple of num kv heads {num_kv_heads}")
    if block_tables.dim() != 2 or block_tables.shape[0] != batch:
        raise ValueError(f"block_tables must be [B={batch}, max_blocks], got {tuple(block_tables.shape)}")
    if context_lens.shape != (batch,):
        raise ValueError(f"context_lens must be [B={batch}], got {tuple(context_lens.shape)}")
    if block_tables.dtype.is_floating_point or context_lens.dtype.is_floating_point:
        raise ValueError("block_tables and context_lens must be integer tensors")
    if not check_values or batch == 0:
        return
    lengths = context_lens.long().cpu()
    capacity = block_tables.shape[1] * block_size
    if int(lengths.min()) < 1 or int(lengths.max()) > capacity:
        raise ValueError(f"context_lens must lie in [1, {capacity}] (max_blocks * block_size), got {lengths}")
    used = torch.arange(block_tables.shape[1])[None, :] < (-(-lengths // block_size))[:, None]
    pages = block_tables.long().cpu()[used]
    if pages.numel() and (int(pages.min()) < 0 or int(pages.max()) >= num_pages):
        raise ValueError(f"block_tables reference pages outside [0, {num_pages}) within context_lens")
