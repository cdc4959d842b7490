"""Gated delta rule as a recurrence vectorised over batch and heads: the decode path (T = 1).

Same math and signature as `gdn_naive.gated_delta_rule`; loops only over time, so it is the form
for one new token per sequence. See the naive module for the update rule and shapes.
"""

from __future__ import annotations

import torch


def recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    out, state, _ = _recurrence(q, k, v, g, beta, initial_state, keep_steps=False)
    return out, state


def recurrent_gated_delta_rule_steps(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """As `recurrent_gated_delta_rule`, but returns the state after every step, [B, T, H, Dk, Dv]
    fp32 (the speculative verify keeps each one, so acceptance can pick a step), in one pass."""
    out, _, steps = _recurrence(q, k, v, g, beta, initial_state, keep_steps=True)
    return out, steps


def _recurrence(q, k, v, g, beta, initial_state, keep_steps: bool):
    batch, steps, heads, k_dim = q.shape
    v_dim = v.shape[-1]
    if initial_state is None:
        state = torch.zeros(batch, heads, k_dim, v_dim, dtype=torch.float32, device=q.device)
    else:
        state = initial_state.to(torch.float32, copy=True)
    out_dtype = v.dtype
    q = q.float() * k_dim**-0.5
    k, v, decay, beta = k.float(), v.float(), g.float().exp(), beta.float()
    out = torch.empty(batch, steps, heads, v_dim, dtype=torch.float32, device=q.device)
    kept = torch.empty(batch, steps, heads, k_dim, v_dim, device=q.device) if keep_steps else None
    for t in range(steps):
        k_t = k[:, t].unsqueeze(-2)  # [B, H, 1, Dk]
        state.mul_(decay[:, t, :, None, None])
        err = v[:, t] - (k_t @ state).squeeze(-2)  # [B, H, Dv]
        err.mul_(beta[:, t, :, None])
        state.add_(k_t.transpose(-1, -2) @ err.unsqueeze(-2))
        out[:, t] = (q[:, t].unsqueeze(-2) @ state).squeeze(-2)
        if kept is not None:
            kept[:, t] = state
    return out.to(out_dtype), state, kept
