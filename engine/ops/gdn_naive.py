"""Gated delta rule, token by token: the readable reference for the chunked and recurrent forms.

For each head, with state S [Dk, Dv] (fp32), at every step t:

    S   <- exp(g_t) * S                      # gated decay (g_t <= 0, log space)
    err <- v_t - S^T k_t                     # what the memory predicts for k_t vs. the truth
    S   <- S + beta_t * k_t err^T            # delta-rule write with strength beta_t in (0, 1)
    o_t <- S^T (q_t / sqrt(Dk))

Shapes: q, k [B, T, H, Dk] (already L2-normalised and repeated to the value heads), v [B, T, H, Dv],
g, beta [B, T, H], initial_state [B, H, Dk, Dv] or None (zeros). Returns (out [B, T, H, Dv] in v's
dtype, final_state [B, H, Dk, Dv] fp32).
"""

from __future__ import annotations

import torch


def gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, steps, heads, k_dim = q.shape
    v_dim = v.shape[-1]
    state = (
        torch.zeros(batch, heads, k_dim, v_dim, dtype=torch.float32, device=q.device)
        if initial_state is None
        else initial_state.float().clone()
    )
    scale = k_dim**-0.5
    out = torch.empty(batch, steps, heads, v_dim, dtype=torch.float32, device=q.device)
    for b in range(batch):
        for h in range(heads):
            s = state[b, h]
            for t in range(steps):
                q_t, k_t, v_t = q[b, t, h].float() * scale, k[b, t, h].float(), v[b, t, h].float()
                s = s * torch.exp(g[b, t, h].float())
                err = v_t - s.T @ k_t
                s = s + beta[b, t, h].float() * torch.outer(k_t, err)
                out[b, t, h] = s.T @ q_t
            state[b, h] = s
    return out.to(v.dtype), state
