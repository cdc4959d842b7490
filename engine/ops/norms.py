"""RMS norms of the hybrid models, computed in fp32 and returned in the input dtype (as HF does)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm_zero_centered(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3-Next / Qwen3.5 RMSNorm: the stored weight is an offset from 1, i.e. y = x̂ · (1 + w)."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * (1.0 + weight.float())).to(x.dtype)


def gated_rms_norm(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """DeltaNet output norm: y = (w · x̂) · silu(gate); a plain (not zero-centred) weight."""
    xf = x.float()
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return ((weight * normed).float() * F.silu(gate.float())).to(x.dtype)


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x²) + eps) along the last dim, as fla (and transformers) define it."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)
