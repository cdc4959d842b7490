"""The training objective: next-token loss of the main model + the MTP head's loss, as the real
models train them together.

MTP (DeepSeek-V3 / Qwen3-Next): the head reads the main model's final-normed hidden state h[p]
and the embedding of token p+1 and predicts token p+2; its loss is added with weight λ
(DeepSeek-V3 uses λ = 0.3 for most of training) and its gradient flows into the main model. The
engine reuses the one MTP layer for drafts 2..k by feeding its own output back in place of h, so
a second-step term trains that use too (row p's output stands in for h[p+1], predicting p+3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.model_config import ModelConfig
from engine.models.mtp import PREFIX, MtpHead, to_compute_layout
from engine.training import trainable


@dataclass(frozen=True, slots=True)
class Losses:
    total: torch.Tensor
    main: float
    mtp: float  # first MTP step
    mtp_second: float


def mtp_head(cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> MtpHead:
    """An `MtpHead` over the (differentiable) canonical weights: the same forward the drafter runs."""
    mtp = {k[len(PREFIX) :]: to_compute_layout(v) for k, v in weights.items() if k.startswith(PREFIX)}
    return MtpHead(cfg, mtp, weights["embed_tokens.weight"], trainable.lm_head(cfg, weights).t())


def mtp_outputs(
    head: MtpHead, hidden: torch.Tensor, token_ids: torch.Tensor, offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One MTP pass over rows p = 0 .. T-3-offset of each sequence: hidden [B, T', H] (h, or the
    previous pass's output), tokens [B, T]. Returns (output [B, n, H], targets [B, n]): row p reads
    token p+1+offset at position p+offset and predicts token p+2+offset."""
    batch, steps = token_ids.shape
    n = steps - 2 - offset
    rows = hidden[:, :n].reshape(batch * n, -1)
    nxt = token_ids[:, 1 + offset : 1 + offset + n].reshape(-1)
    positions = torch.arange(offset, offset + n, device=token_ids.device).repeat(batch)
    groups = [(None, b * n, (b + 1) * n) for b in range(batch)]
    out = head.forward(rows, nxt, positions, groups).view(batch, n, -1)
    return out, token_ids[:, 2 + offset :]


def losses(
    cfg: ModelConfig,
    weights: dict[str, torch.Tensor],
    token_ids: torch.Tensor,
    mtp_weight: float,
    second_step_weight: float,
) -> Losses:
    """token_ids [B, T] → the weighted training loss and its parts."""
    hidden = trainable.hidden_states(cfg, weights, token_ids)
    head_w = trainable.lm_head(cfg, weights)
    main = _cross_entropy(F.linear(hidden[:, :-1], head_w), token_ids[:, 1:])
    total, mtp, second = main, torch.zeros(()), torch.zeros(())
    if mtp_weight > 0 and any(k.startswith(PREFIX) for k in weights):
        head = mtp_head(cfg, weights)
        out, targets = mtp_outputs(head, hidden, token_ids, 0)
        mtp = _cross_entropy(F.linear(out, head_w), targets)
        total = total + mtp_weight * mtp
        if second_step_weight > 0:
            out2, targets2 = mtp_outputs(head, out, token_ids, 1)
            second = _cross_entropy(F.linear(out2, head_w), targets2)
            total = total + mtp_weight * second_step_weight * second
    return Losses(total, main.item(), mtp.item(), second.item())


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
