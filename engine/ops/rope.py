"""Rotary position embedding on the first `rotary_dim` channels of each head (partial RoPE).

Same convention as transformers' Qwen models: frequencies `theta^(-2i/rotary_dim)`, cos/sin laid out
as `cat(freqs, freqs)` and applied with `rotate_half`; the remaining channels pass through.
"""

from __future__ import annotations

import torch


def rope_cos_sin(
    positions: torch.Tensor, rotary_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [N, rotary_dim] for integer `positions` [N] (computed in fp32)."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=positions.device) / rotary_dim)
    )
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, H, D]; cos/sin [N, R] with R <= D. Returns a new tensor."""
    rotary_dim = cos.shape[-1]
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    cos, sin = cos[:, None, :], sin[:, None, :]
    half = rotary_dim // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat((rot * cos + rotated * sin, rest), dim=-1)


class RopeTable:
    """cos / sin of positions [0, n) computed once, grown by doubling, laid out for a rotation
    in 4 ops instead of `apply_rope`'s ~10: over the whole head width, cos padded with 1 and sin
    with 0 on the channels RoPE leaves alone, and the sign of `rotate_half` folded into sin, so
    x' = x * cos + x[..., perm] * sin; perm swaps the rotary halves. The same products summed in
    the same order as `apply_rope`, bit for bit. For callers that know the positions' bound on the
    host (the MTP head's drafting: its groups name them)."""

    def __init__(self, rotary_dim: int, head_dim: int, theta: float) -> None:
        self.rotary_dim, self.head_dim, self.theta = rotary_dim, head_dim, theta
        self.table: torch.Tensor | None = None  # [n, 2, head_dim]: cos | signed sin

    def rotation(self, positions: torch.Tensor, end: int, dtype: torch.dtype):
        """A function x [N, H, head_dim] → x rotated to `positions` [N] (all < end)."""
        table = self.table
        if table is None or table.shape[0] < end or table.dtype != dtype or table.device != positions.device:
            size = max(end, 2 * table.shape[0] if table is not None else 256)
            table = self.table = self._build(size, dtype, positions.device)
        cos, sin = table.index_select(0, positions).unsqueeze(1).unbind(2)  # [N, 1, head_dim] each
        perm = self.perm
        return lambda x: x * cos + x.index_select(-1, perm) * sin

    def _build(self, size: int, dtype: torch.dtype, device) -> torch.Tensor:
        rotary, half, rest = self.rotary_dim, self.rotary_dim // 2, self.head_dim - self.rotary_dim
        cos, sin = rope_cos_sin(torch.arange(size, device=device), rotary, self.theta, dtype)
        ones, zeros = cos.new_ones(size, rest), cos.new_zeros(size, rest)
        signed = torch.cat((-sin[:, :half], sin[:, half:], zeros), dim=-1)
        swap = [*range(half, rotary), *range(half), *range(rotary, self.head_dim)]
        self.perm = torch.tensor(swap, device=device)
        return torch.stack((torch.cat((cos, ones), dim=-1), signed), dim=1)
