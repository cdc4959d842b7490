"""The model's MoE block: the same ops per step whatever the expert count (no per-expert loop, no
host read-back), and the same result as the dense reference with the model's routing."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.make_model import preset_config
from engine.model_config import ModelConfig
from engine.models.moe import SparseMoe
from engine.ops.moe import dense_wins, moe_dense_reference

pytestmark = pytest.mark.timeout(60)

HIDDEN, INTER, SHARED = 32, 16, 24


class OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def moe_block(num_experts: int, top_k: int = 2, seed: int = 0) -> SparseMoe:
    cfg = ModelConfig.from_json(
        {**preset_config("tiny"), "num_experts": num_experts, "num_experts_per_tok": top_k}
    )
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) / shape[-1] ** 0.5

    weights = {
        "gate.weight": rand(num_experts, HIDDEN),
        "experts.gate_up_proj": rand(num_experts, 2 * INTER, HIDDEN),
        "experts.down_proj": rand(num_experts, HIDDEN, INTER),
        "shared_expert.gate_proj.weight": rand(SHARED, HIDDEN),
        "shared_expert.up_proj.weight": rand(SHARED, HIDDEN),
        "shared_expert.down_proj.weight": rand(HIDDEN, SHARED),
        "shared_expert_gate.weight": rand(1, HIDDEN),
    }
    return SparseMoe(cfg, weights)


def recorded_ops(block: SparseMoe, tokens: int) -> list[str]:
    x = torch.randn(tokens, HIDDEN, generator=torch.Generator().manual_seed(tokens))
    with OpRecorder() as recorder:
        block.forward(x)
    return recorder.ops


@pytest.mark.parametrize("tokens", [1, 16])
@pytest.mark.parametrize("experts", [(4, 8), (64, 128)])  # the dense form (dense_wins), the grouped one
def test_ops_per_step_do_not_depend_on_the_expert_count(tokens: int, experts: tuple[int, int]) -> None:
    few, many = (recorded_ops(moe_block(n), tokens) for n in experts)
    assert dense_wins(tokens, experts[0], 2) == dense_wins(tokens, experts[1], 2)

    assert few == many
    assert "aten._local_scalar_dense" not in few  # nothing read back to the host
    assert few.count("aten.mm") + few.count("aten._grouped_mm") < 12


def test_block_equals_dense_reference_with_the_models_routing() -> None:
    """Softmax over all experts in fp32, top-k, renormalised (norm_topk_prob), shared expert gated."""
    block = moe_block(8, top_k=3, seed=4)
    x = torch.randn(9, HIDDEN, generator=torch.Generator().manual_seed(2))

    probs = torch.softmax(x @ block.router_t, dim=-1, dtype=torch.float32)
    top_w, top_e = probs.topk(3, dim=-1)
    top_w = top_w / top_w.sum(-1, keepdim=True)
    routed = moe_dense_reference(x, top_e, top_w, block.gate_up_t, block.down_t)
    shared = block.shared.forward(x) * torch.sigmoid(x @ block.shared_gate_t)

    torch.testing.assert_close(block.forward(x), routed + shared, atol=1e-5, rtol=1e-5)
