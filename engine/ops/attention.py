"""Causal attention of a prefill chunk against its sequence's full context (prefix + chunk).

Decode attention over pages lives in `engine/ops/paged_attention.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def chunk_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int, scale: float
) -> torch.Tensor:
    """q [T, Hq, D] at positions start_pos..start_pos+T-1; k, v [start_pos+T, Hkv, D] → [T, Hq, D].

    Query t sees keys [0, start_pos + t]. GQA: query head h reads kv head h // (Hq // Hkv).
    """
    steps, num_q_heads, _ = q.shape
    context, num_kv_heads, _ = k.shape
    group = num_q_heads // num_kv_heads
    k = k.repeat_interleave(group, dim=1) if group > 1 else k
    v = v.repeat_interleave(group, dim=1) if group > 1 else v
    q_pos = torch.arange(start_pos, start_pos + steps, device=q.device)
    mask = torch.arange(context, device=q.device)[None, :] <= q_pos[:, None]  # [T, L]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=scale
    )
    return out.transpose(0, 1)
