"""Gated delta rule in chunks: the prefill path.

Same math and signature as `gdn_naive.gated_delta_rule`. Within a chunk of C tokens the delta rule's
sequential writes are folded into one unit-lower-triangular solve (the WY representation), so the
work is matmuls of size C; only the state hand-off between chunks is sequential.

Per chunk, with G = cumsum(g) inside the chunk, D[i, j] = exp(G_i - G_j) for j <= i (else 0):
    T  = I + strictly_lower((beta k) k^T * D)
    U  = T^-1 (beta v)            W = T^-1 (beta k exp(G))
    V' = U - W S                  (the errors each token writes, given the incoming state S)
    O  = (q exp(G)) S + ((q k^T) * D) V'
    S  = exp(G_C) S + (k exp(G_C - G))^T V'
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_SIZE = 64


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, steps, heads, k_dim = q.shape
    v_dim = v.shape[-1]
    out_dtype = v.dtype
    # [B, H, T, D] fp32; q carries the 1/sqrt(Dk) scale.
    q, k, v = (x.transpose(1, 2).float() for x in (q, k, v))
    q = q * k_dim**-0.5
    g, beta = (x.transpose(1, 2).float() for x in (g, beta))
    pad = (-steps) % chunk_size
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (F.pad(x, (0, pad)) for x in (g, beta))
    n = (steps + pad) // chunk_size
    q, k, v = (x.reshape(batch, heads, n, chunk_size, -1) for x in (q, k, v))
    g, beta = (x.reshape(batch, heads, n, chunk_size) for x in (g, beta))

    cum = g.cumsum(-1)
    upper = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).triu(1)
    decay = (cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(upper, float("-inf")).exp()
    k_beta = k * beta.unsqueeze(-1)
    system = (k_beta @ k.transpose(-1, -2)) * decay  # solve uses only its strict lower part
    u = torch.linalg.solve_triangular(system, v * beta.unsqueeze(-1), upper=False, unitriangular=True)
    w = torch.linalg.solve_triangular(
        system, k_beta * cum.exp().unsqueeze(-1), upper=False, unitriangular=True
    )
    intra = (q @ k.transpose(-1, -2)) * decay
    q_decayed = q * cum.exp().unsqueeze(-1)
    k_to_end = k * (cum[..., -1:] - cum).exp().unsqueeze(-1)
    chunk_decay = cum[..., -1].exp()[..., None, None]

    if initial_state is None:
        state = torch.zeros(batch, heads, k_dim, v_dim, dtype=torch.float32, device=q.device)
    else:
        state = initial_state.to(torch.float32, copy=True)
    out = torch.empty(batch, heads, n, chunk_size, v_dim, dtype=torch.float32, device=q.device)
    for i in range(n):
        v_new = u[:, :, i] - w[:, :, i] @ state
        out[:, :, i] = q_decayed[:, :, i] @ state + intra[:, :, i] @ v_new
        state = state * chunk_decay[:, :, i] + k_to_end[:, :, i].transpose(-1, -2) @ v_new
    out = out.reshape(batch, heads, n * chunk_size, v_dim)[:, :, :steps]
    return out.transpose(1, 2).to(out_dtype), state
