"""The autograd MoE of engine/ops/moe_autograd.py (training and the MTP head): both forms of the
routed experts equal the independent dense reference of engine/ops/moe.py (foreign ids included),
agree with each other in their gradients, and checkpoint-layout views give the same block and
gradients as compute-layout copies."""

from __future__ import annotations

import pytest
import torch

from engine.ops.moe import local_expert_ids, moe_dense_reference, route
from engine.ops.moe_autograd import MoeWeights, experts_dense, experts_looped, sparse_moe

pytestmark = pytest.mark.timeout(60)

EXPERTS, HIDDEN, INTER, SHARED, TOP_K = 8, 16, 12, 20, 2


def checkpoint_weights(seed: int) -> dict[str, torch.Tensor]:
    """One block's canonical tensors in checkpoint layout ([out, in], experts [E, out, in])."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) / shape[-1] ** 0.5

    return {
        "mlp.gate.weight": rand(EXPERTS, HIDDEN),
        "mlp.experts.gate_up_proj": rand(EXPERTS, 2 * INTER, HIDDEN),
        "mlp.experts.down_proj": rand(EXPERTS, HIDDEN, INTER),
        "mlp.shared_expert.gate_proj.weight": rand(SHARED, HIDDEN),
        "mlp.shared_expert.up_proj.weight": rand(SHARED, HIDDEN),
        "mlp.shared_expert.down_proj.weight": rand(HIDDEN, SHARED),
        "mlp.shared_expert_gate.weight": rand(1, HIDDEN),
    }


def routed_inputs(rows: int, seed: int, first_expert: int = 0, held: int = EXPERTS):
    w = MoeWeights.checkpoint_layout(checkpoint_weights(seed), "mlp.")
    x = torch.randn(rows, HIDDEN, generator=torch.Generator().manual_seed(seed + 1))
    top_w, top_e = route(x, w.router, TOP_K, True)
    top_e = local_expert_ids(top_e, first_expert, held)
    gate_up, down = w.gate_up[first_expert : first_expert + held], w.down[first_expert : first_expert + held]
    return x, top_e, top_w, gate_up.contiguous(), down.contiguous()


@pytest.mark.parametrize("form", [experts_looped, experts_dense])
@pytest.mark.parametrize(("first_expert", "held"), [(0, EXPERTS), (0, 4), (4, 4)])
def test_routed_forms_equal_the_dense_reference(form, first_expert: int, held: int) -> None:
    """Under expert parallelism (held < E) pairs routed to the other rank's experts add nothing."""
    x, top_e, top_w, gate_up, down = routed_inputs(
        11, seed=held + first_expert, first_expert=first_expert, held=held
    )
    expected = moe_dense_reference(x, top_e, top_w, gate_up, down)
    torch.testing.assert_close(form(x, top_e, top_w, gate_up, down), expected, atol=1e-5, rtol=1e-5)


def test_dense_and_looped_forms_have_the_same_gradients() -> None:
    x, top_e, top_w, gate_up, down = routed_inputs(9, seed=3, held=4)
    grads = []
    for form in (experts_looped, experts_dense):
        leaves = [t.clone().requires_grad_() for t in (x, gate_up, down)]
        form(leaves[0], top_e, top_w, *leaves[1:]).pow(2).sum().backward()
        grads.append([t.grad for t in leaves])
    for looped, dense in zip(*grads, strict=True):
        torch.testing.assert_close(looped, dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rows", [5, 40])
def test_checkpoint_layout_views_train_the_checkpoint_tensors(rows: int) -> None:
    """The block over transposed views of checkpoint tensors = the block over compute-layout
    copies, and the gradients reach the checkpoint tensors (transposed back)."""
    ckpt = {k: v.requires_grad_() for k, v in checkpoint_weights(5).items()}
    compute = {k: v.detach().transpose(-2, -1).contiguous().requires_grad_() for k, v in ckpt.items()}
    x = torch.randn(rows, HIDDEN, generator=torch.Generator().manual_seed(6))
    outs = [
        sparse_moe(x, layout(w, "mlp."), TOP_K, True, dense_max_rows=32)
        for layout, w in ((MoeWeights.checkpoint_layout, ckpt), (MoeWeights.compute_layout, compute))
    ]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-6)
    for out in outs:
        out.pow(2).sum().backward()
    for name, tensor in ckpt.items():
        torch.testing.assert_close(tensor.grad, compute[name].grad.transpose(-2, -1), atol=1e-6, rtol=1e-6)
