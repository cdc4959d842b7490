"""Attention of speculative verify rows over the paged KV: T consecutive rows per sequence.

A verify group has V sequences with T rows each (the last token and its drafts); row t of a
sequence sees its context up to its own position. The decode op (`paged_attention_decode`) serves
them as V*T independent rows, each gathering its whole context: on CPU that gather and the score
einsum over it are most of the verify's attention cost. Here each sequence's pages are gathered
once and its T queries share them, with a per-row length mask: the same math as the per-row op
(`paged_attention_torch`, which the tests hold this to), T times less gathering.

On CUDA the per-row Triton kernels run (they read pages in place; nothing to share).
"""

from __future__ import annotations

import torch

from engine.ops.dispatch import use_triton
from engine.ops.paged_attention import paged_attention_decode


def paged_attention_verify(
    q: torch.Tensor,
    kv_layer: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    steps: int,
    scale: float,
) -> torch.Tensor:
    """q [V*T, Hq, D] (T = `steps` rows per sequence, in order); block_tables [V*T, B] and
    context_lens [V*T] per row, as the decode op takes them (a sequence's later rows' tables
    extend its earlier rows'). Returns [V*T, Hq, D]."""
    if use_triton(q):
        return paged_attention_decode(q, kv_layer, block_tables, context_lens, scale, validate=False)
    return paged_attention_verify_torch(q, kv_layer, block_tables, context_lens, steps, scale)


def paged_attention_verify_torch(
    q: torch.Tensor,
    kv_layer: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    steps: int,
    scale: float,
) -> torch.Tensor:
    rows, num_q_heads, head_dim = q.shape
    if rows % steps:
        raise ValueError(f"{rows} verify rows do not split into sequences of {steps}")
    num = rows // steps
    block_size, num_kv_heads = kv_layer.shape[2], kv_layer.shape[3]
    group = num_q_heads // num_kv_heads
    num_blocks = block_tables.shape[1]
    # Each sequence's last row has the longest context: its table covers the others'.
    pages = block_tables.view(num, steps, num_blocks)[:, -1].long().clamp(min=0).reshape(-1)
    gathered_shape = (num, num_blocks * block_size, num_kv_heads, head_dim)
    keys = kv_layer[:, 0].index_select(0, pages).view(gathered_shape).float()
    values = kv_layer[:, 1].index_select(0, pages).view(gathered_shape).float()
    grouped_q = q.float().view(num, steps, num_kv_heads, group, head_dim)
    scores = torch.einsum("vtkgd,vlkd->vtkgl", grouped_q, keys) * scale
    positions = torch.arange(num_blocks * block_size, device=q.device)
    lens = context_lens.to(q.device).long().view(num, steps)
    padding = positions[None, None, :] >= lens[:, :, None]  # [V, T, L]
    scores.masked_fill_(padding[:, :, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("vtkgl,vlkd->vtkgd", probs, values)
    return out.reshape(rows, num_q_heads, head_dim).to(q.dtype)
