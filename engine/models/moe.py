"""Feed-forward blocks: dense SwiGLU MLP and sparse MoE (softmax top-k router + gated shared expert).

The routed experts run as one grouped op per projection over all experts of the step
(`engine.ops.moe.routed_experts`: `torch._grouped_mm` on CPU, fused Triton kernels on CUDA), so the
ops dispatched per step do not depend on the expert count and nothing is read back to the host.
Those kernels take no FP8 weights: an FP8 checkpoint's routed experts are dequantized at load even
under `fp8_compute=block` (the shared expert and dense MLPs then run `Fp8BlockLinear`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.model_config import ModelConfig
from engine.models.linear import apply_linear, build_linear, fp8_block
from engine.ops.moe import grouped_mm_supported, local_expert_ids, route, routed_experts


class DenseMlp:
    def __init__(
        self, weights: dict[str, torch.Tensor], prefix: str = "", block: tuple[int, int] | None = None
    ) -> None:
        """`block`: the checkpoint's FP8 block size, for weights the loader kept in FP8."""
        # Plain weights are kept as [in, out]; FP8 ones as `Fp8BlockLinear` (engine/models/linear.py).
        names = [f"{prefix}gate_proj.weight", f"{prefix}up_proj.weight"]
        self.gate_up = build_linear(weights, names, block)
        self.down = build_linear(weights, [f"{prefix}down_proj.weight"], block)
        self.inter = weights[names[0]].shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = torch.split(apply_linear(x, self.gate_up), self.inter, dim=-1)
        return apply_linear(F.silu(gate) * up, self.down)


class SparseMoe:
    def __init__(
        self,
        cfg: ModelConfig,
        weights: dict[str, torch.Tensor],
        first_expert: int = 0,
        with_shared: bool = True,
    ) -> None:
        """`weights["experts.*"]` may hold a contiguous range of the experts (expert parallelism):
        global ids [first_expert, first_expert + E_local); pairs routed elsewhere contribute zero
        here and arrive through the layer's all-reduce. `with_shared`: add the shared expert (False
        on ranks > 0 when it is replicated, so the all-reduce counts it once)."""
        self.top_k = cfg.num_experts_per_tok
        self.norm_topk_prob = cfg.norm_topk_prob
        self.num_experts = cfg.num_experts
        self.first_expert = first_expert
        self.with_shared = with_shared
        self.router_t = weights["gate.weight"].t().contiguous()
        self.gate_up_t = weights["experts.gate_up_proj"].transpose(1, 2).contiguous()  # [E, H, 2I]
        self.down_t = weights["experts.down_proj"].transpose(1, 2).contiguous()  # [E, I, H]
        self.inter = self.gate_up_t.shape[2] // 2
        self.shared = DenseMlp(weights, "shared_expert.", fp8_block(cfg))
        self.shared_gate_t = weights["shared_expert_gate.weight"].t().contiguous()
        # Probe (once per device kind and dtype) now, so no step pays for it or records its ops.
        grouped_mm_supported(self.gate_up_t.device.type, self.gate_up_t.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top_w, top_e = route(x, self.router_t, self.top_k, self.norm_topk_prob)
        out = self._experts(x, top_e, top_w.to(x.dtype))
        if not self.with_shared:
            return out
        shared = self.shared.forward(x) * torch.sigmoid(x @ self.shared_gate_t)
        return out + shared

    def _experts(self, x: torch.Tensor, top_e: torch.Tensor, top_w: torch.Tensor) -> torch.Tensor:
        """The routed experts this rank holds (all of them without expert parallelism). Under EP a
        pair routed to another rank's expert is foreign here (id `held`): not computed, and the
        layer's all-reduce adds it from its own rank, so each pair counts exactly once. Shapes
        stay fixed (no host read-back, graph-safe)."""
        held = self.gate_up_t.shape[0]
        if self.first_expert == 0 and held == self.num_experts:
            return routed_experts(x, top_e, top_w, self.gate_up_t, self.down_t)
        local = local_expert_ids(top_e, self.first_expert, held)
        return routed_experts(x, local, top_w, self.gate_up_t, self.down_t, foreign=True)
