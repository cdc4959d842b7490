"""The fused MoE block of MTP drafting against the autograd-friendly reference `sparse_moe`."""

from __future__ import annotations

import pytest
import torch

from engine.ops.moe_autograd import MoeWeights, sparse_moe
from engine.ops.moe_block import FusedMoeWeights, fused_moe_block

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(("experts", "inter", "shared", "norm"), [(16, 8, 8, True), (8, 6, 10, False)])
@pytest.mark.parametrize("rows", [1, 8, 21])
def test_fused_block_equals_sparse_moe(experts: int, inter: int, shared: int, norm: bool, rows: int) -> None:
    hidden = 12
    gen = torch.Generator().manual_seed(rows + experts)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) / shape[-2 if len(shape) > 1 else 0] ** 0.5

    w = MoeWeights(
        rand(hidden, experts),
        rand(experts, hidden, 2 * inter),
        rand(experts, inter, hidden),
        rand(hidden, shared),
        rand(hidden, shared),
        rand(shared, hidden),
        rand(hidden, 1),
    )
    x = torch.randn(rows, hidden, generator=gen)
    expected = sparse_moe(x, w, 4, norm, dense_max_rows=0)  # the looped form: only picked experts
    got = fused_moe_block(x, FusedMoeWeights.build(w), 4, norm)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
