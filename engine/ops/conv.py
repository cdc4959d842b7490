"""Causal depthwise conv1d + SiLU with a carried state (the DeltaNet input mixer).

The state of a channel is its last `K - 1` inputs; position p's state holds inputs [p-K+1, p).
A fresh sequence starts from zeros, which equals the left zero-padding of a plain causal conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_prefill(
    x: torch.Tensor, state: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, C] new inputs, state [C, K-1], weight [C, K] → (silu(conv) [T, C], new state [C, K-1])."""
    steps = x.shape[0]
    window = torch.cat([state.to(x.dtype), x.t()], dim=-1)  # [C, K-1+T]
    out = F.conv1d(window.unsqueeze(0), weight.unsqueeze(1), groups=weight.shape[0])[0]  # [C, T]
    new_state = window[:, -state.shape[-1] :] if state.shape[-1] else window[:, :0]
    return F.silu(out[:, -steps:]).t(), new_state


def causal_conv1d_step(
    x: torch.Tensor, state: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per sequence: x [B, C], state [B, C, K-1], weight [C, K] → (out [B, C], new state)."""
    window = torch.cat([state.to(x.dtype), x.unsqueeze(-1)], dim=-1)  # [B, C, K]
    out = torch.einsum("bck,ck->bc", window, weight)
    return F.silu(out), window[:, :, 1:]
