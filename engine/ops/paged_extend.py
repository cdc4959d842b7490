"""Extend (chunked-prefill) attention over a paged KV cache: the readable torch reference.

A batch of prefill chunks, packed as rows of q `[T, Hq, D]` by `cu_seqlens` `[S+1]`. Chunk s sits
at positions `start_pos[s] .. start_pos[s] + len_s - 1` of its sequence; its K/V (cached prefix and
the chunk's own tokens, already written) lie in the pages of `block_tables[s]`. Query t of chunk s
sees keys [0, start_pos[s] + t]: all of the cached prefix, causal within the chunk.
The Triton kernel with this signature is `engine.ops.triton.paged_extend.paged_extend_triton`.
"""

from __future__ import annotations

import torch

from engine.ops.attention import chunk_causal_attention


def paged_extend_reference(
    q: torch.Tensor,
    kv_layer: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens: torch.Tensor,
    start_pos: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Per chunk: gather its pages, then dense causal attention (`chunk_causal_attention`)."""
    block_size, num_kv_heads, head_dim = kv_layer.shape[2:]
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for s, prefix in enumerate(start_pos.tolist()):
        begin, end = bounds[s], bounds[s + 1]
        context = prefix + end - begin
        pages = block_tables[s, : -(-context // block_size)].long()
        keys = kv_layer[pages, 0].reshape(-1, num_kv_heads, head_dim)[:context]
        values = kv_layer[pages, 1].reshape(-1, num_kv_heads, head_dim)[:context]
        out[begin:end] = chunk_causal_attention(
            q[begin:end].float(), keys.float(), values.float(), prefix, scale
        ).to(q.dtype)
    return out
