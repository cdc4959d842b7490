"""The sparse MoE block as plain, autograd-friendly torch: the one home of its math for training the
main model (`engine.training.trainable`) and for the MTP head (`engine.models.mtp`, drafted with and
distilled). Inference runs the routed experts through `engine.ops.moe.routed_experts` (grouped /
Triton, no backward) and shares the router, `route`, with this module.

    out = sum_k top_w[k] * swiglu_e(x) + sigmoid(x @ shared_gate) * swiglu_shared(x)

with the softmax top-k router (renormalised when `norm_topk_prob`) and SwiGLU experts
(`gate_up` = gate columns, then up columns). All weights here are in compute layout ([in, out],
experts [E, in, out]); `MoeWeights.checkpoint_layout` views a checkpoint's [out, in] tensors that
way without copying, so gradients land in the checkpoint tensors.

Two forms of the routed experts, chosen by row count (`dense_max_rows`):
- `experts_looped`: each hit expert once over its rows (reads the hit ids back to the host);
  the work is the routed pairs' (training, long prompts).
- `experts_dense`: every expert over every row in a few batched matmuls, unselected ones weighted
  0: loop-free and sync-free, E/K times the work, faster for a few rows (MTP drafting).

Expert parallelism: the weights may hold experts [first_expert, first_expert + E_local); a pair
routed elsewhere gets the id E_local (foreign, `local_expert_ids`) and adds nothing here.

Why not `routed_experts` for the many-rows form: on CUDA it runs the Triton kernels, which have no
backward, and `torch._grouped_mm` there takes bf16 only (training runs fp32). On CPU (torch 2.13)
`moe_grouped_torch` does backpropagate and is 2.7-6x faster forward + backward than the loop
(8-128 experts), but its input gradient for rows past the last group (foreign pairs) is
uninitialised memory, and its sums round differently from the loop's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.ops.moe import local_expert_ids, route


def swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """Dense SwiGLU MLP, weights [in, out]: (silu(x @ gate) * (x @ up)) @ down."""
    return (F.silu(x @ gate) * (x @ up)) @ down


@dataclass(frozen=True, slots=True)
class MoeWeights:
    """One MoE block's tensors in compute layout (views are fine)."""

    router: torch.Tensor  # [H, E]
    gate_up: torch.Tensor  # [E_local, H, 2I]
    down: torch.Tensor  # [E_local, I, H]
    shared_gate_proj: torch.Tensor  # [H, S]
    shared_up_proj: torch.Tensor  # [H, S]
    shared_down_proj: torch.Tensor  # [S, H]
    shared_gate: torch.Tensor  # [H, 1]

    @classmethod
    def compute_layout(cls, w: dict[str, torch.Tensor], p: str) -> MoeWeights:
        """From canonical names under prefix `p` already in compute layout (the MTP head's)."""
        return cls(*(w[p + name] for name in _NAMES))

    @classmethod
    def checkpoint_layout(cls, w: dict[str, torch.Tensor], p: str) -> MoeWeights:
        """From canonical names under prefix `p` in checkpoint layout ([out, in], experts
        [E, out, in]), as transposed views (trainable)."""
        return cls(*(w[p + name].transpose(-2, -1) for name in _NAMES))


_NAMES = (
    "gate.weight",
    "experts.gate_up_proj",
    "experts.down_proj",
    "shared_expert.gate_proj.weight",
    "shared_expert.up_proj.weight",
    "shared_expert.down_proj.weight",
    "shared_expert_gate.weight",
)


def sparse_moe(
    x: torch.Tensor,
    w: MoeWeights,
    top_k: int,
    norm_topk_prob: bool,
    first_expert: int = 0,
    num_experts: int | None = None,
    with_shared: bool = True,
    dense_max_rows: int = 0,
) -> torch.Tensor:
    """x [N, H] → [N, H]. `num_experts`: the model's (default: all are held); `first_expert`: the
    global id of the first held one. `with_shared`: add the shared expert (False on EP ranks that
    leave it to another). Up to `dense_max_rows` rows run `experts_dense`, more `experts_looped`."""
    top_w, top_e = route(x, w.router, top_k, norm_topk_prob)
    held = w.gate_up.shape[0]
    if num_experts is not None and held != num_experts:
        top_e = local_expert_ids(top_e, first_expert, held)
    experts = experts_dense if x.shape[0] <= dense_max_rows else experts_looped
    routed = experts(x, top_e, top_w, w.gate_up, w.down)
    if not with_shared:
        return routed
    shared = swiglu(x, w.shared_gate_proj, w.shared_up_proj, w.shared_down_proj)
    return routed + shared * torch.sigmoid(x @ w.shared_gate)


def experts_looped(
    x: torch.Tensor, top_e: torch.Tensor, top_w: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor
) -> torch.Tensor:
    """Each hit expert once over its rows; foreign ids (>= E) are skipped."""
    held, inter = gate_up.shape[0], gate_up.shape[-1] // 2
    out = torch.zeros_like(x)
    for expert in torch.unique(top_e[top_e < held]).tolist():
        token, slot = torch.nonzero(top_e == expert, as_tuple=True)
        g, u = torch.split(x[token] @ gate_up[expert], inter, dim=-1)
        y = (F.silu(g) * u) @ down[expert]
        out = out.index_add(0, token, y * top_w[token, slot].unsqueeze(-1).to(y.dtype))
    return out


def experts_dense(
    x: torch.Tensor, top_e: torch.Tensor, top_w: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor
) -> torch.Tensor:
    """Every expert over every row ([E, N, .] batched matmuls), summed with the routing weights
    scattered into [N, E] (zero for experts a row did not pick; foreign ids E land in a row that is
    dropped)."""
    experts, inter = gate_up.shape[0], gate_up.shape[-1] // 2
    g, u = torch.split(torch.matmul(x.unsqueeze(0), gate_up), inter, dim=-1)  # [E, N, I] each
    weights = torch.zeros(experts + 1, x.shape[0], 1, dtype=x.dtype, device=x.device)
    weights = weights.scatter(0, top_e.t().unsqueeze(-1), top_w.t().unsqueeze(-1).to(x.dtype))[:experts]
    act = (F.silu(g) * u * weights).transpose(0, 1).reshape(x.shape[0], experts * inter)
    return act @ down.reshape(experts * inter, -1)  # the weighted sum over experts, in one matmul
