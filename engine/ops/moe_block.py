"""A whole sparse MoE block (router, routed experts, gated shared expert) in two matmuls, for the
few rows of MTP drafting (inference only; `engine.ops.moe_autograd.sparse_moe` is the reference
the tests hold it to).

`FusedMoeWeights` lays every projection that reads x side by side, [H, E + 1 + E * 2I + 2S]:
router | shared-expert gate | each expert's gate, up | the shared expert's gate, up. One matmul
gives the router logits and every expert's activations over every row (E/K times the routed
work, as `experts_dense`); the routing weights, zero for the experts a row did not pick, and the
shared expert's sigmoid gate scale the activations, and one matmul over [E * I + S, H] (the
experts' down projections stacked over the shared one's) sums it all. The sums round differently
from the separate ops', which only drafts see.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.ops.moe_autograd import MoeWeights


@dataclass(frozen=True, slots=True)
class FusedMoeWeights:
    up: torch.Tensor  # [H, E + 1 + E * 2I + 2S]
    down: torch.Tensor  # [E * I + S, H]
    experts: int
    inter: int  # I
    shared: int  # S

    @classmethod
    def build(cls, w: MoeWeights) -> FusedMoeWeights:
        """From a block's compute-layout weights, every expert held (no expert parallelism)."""
        experts, hidden, inter = w.gate_up.shape[0], w.gate_up.shape[1], w.gate_up.shape[2] // 2
        routed_up = w.gate_up.permute(1, 0, 2).reshape(hidden, experts * 2 * inter)
        up = torch.cat([w.router, w.shared_gate, routed_up, w.shared_gate_proj, w.shared_up_proj], dim=1)
        down = torch.cat([w.down.reshape(experts * inter, -1), w.shared_down_proj])
        return cls(up.contiguous(), down.contiguous(), experts, inter, w.shared_down_proj.shape[0])


def fused_moe_block(x: torch.Tensor, w: FusedMoeWeights, top_k: int, norm_topk_prob: bool) -> torch.Tensor:
    """x [N, H] → [N, H], as `sparse_moe` with the shared expert and every expert held."""
    rows, experts, inter, shared = x.shape[0], w.experts, w.inter, w.shared
    y = x @ w.up
    probs = torch.softmax(y[:, :experts], dim=-1, dtype=torch.float32)
    top_w, top_e = torch.topk(probs, top_k, dim=-1)
    if norm_topk_prob:
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
    weights = x.new_zeros(rows, experts).scatter_(1, top_e, top_w.to(x.dtype))
    routed = y[:, experts + 1 : experts + 1 + experts * 2 * inter].view(rows, experts, 2, inter)
    act = F.silu(routed[:, :, 0]) * routed[:, :, 1] * weights.unsqueeze(-1)
    gate_up = y[:, experts + 1 + experts * 2 * inter :]
    shared_act = (
        F.silu(gate_up[:, :shared]) * gate_up[:, shared:] * torch.sigmoid(y[:, experts : experts + 1])
    )
    return torch.cat([act.view(rows, experts * inter), shared_act], dim=1) @ w.down
