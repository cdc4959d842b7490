"""Routed-expert forms against the dense reference (every expert over every token): the grouped
torch path on CPU and the Triton kernels under TRITON_INTERPRET=1; plus the device-side alignment."""

from __future__ import annotations

import pytest
import torch

from engine.ops.moe import (
    dense_wins,
    moe_dense_reference,
    moe_dense_torch,
    moe_grouped_torch,
    routed_experts,
)
from engine.ops.triton.fused_moe import align_pairs, fused_moe_triton, max_padded_rows

pytestmark = pytest.mark.timeout(120)


def random_moe(
    tokens: int, hidden: int, inter: int, experts: int, top_k: int, seed: int, dtype=torch.float32
):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=gen)
    gate_up_t = torch.randn(experts, hidden, 2 * inter, generator=gen) / hidden**0.5
    down_t = torch.randn(experts, inter, hidden, generator=gen) / inter**0.5
    # Route to the first half of the experts only, so some experts get zero tokens.
    scores = torch.rand(tokens, experts // 2, generator=gen)
    top_w, top_e = scores.topk(top_k, dim=-1)
    top_w = top_w / top_w.sum(-1, keepdim=True)
    return x.to(dtype), top_e, top_w.to(dtype), gate_up_t.to(dtype), down_t.to(dtype)


def test_align_pairs_gives_each_block_one_expert_and_each_pair_one_row() -> None:
    top_e = torch.tensor([[3, 0], [3, 1], [0, 3]])
    pair_of_row, block_expert = align_pairs(top_e, num_experts=5, block_m=4)

    assert pair_of_row.shape[0] == -(-max_padded_rows(6, 5, 4) // 4) * 4
    assert block_expert.tolist()[:3] == [0, 1, 3] and set(block_expert.tolist()[3:]) == {-1}
    rows = pair_of_row.view(-1, 4)
    flat = top_e.reshape(-1)
    for block, expert in enumerate(block_expert.tolist()[:3]):
        real = [p for p in rows[block].tolist() if p < 6]
        assert real and all(int(flat[p]) == expert for p in real)
    assert sorted(p for p in pair_of_row.tolist() if p < 6) == list(range(6))


@pytest.mark.parametrize(("tokens", "top_k"), [(1, 1), (5, 2), (23, 3)])
def test_grouped_torch_matches_dense_reference(tokens: int, top_k: int) -> None:
    args = random_moe(tokens, 32, 24, experts=8, top_k=top_k, seed=tokens)

    torch.testing.assert_close(moe_grouped_torch(*args), moe_dense_reference(*args), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(routed_experts(*args), moe_dense_reference(*args), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("tokens", "top_k"), [(1, 1), (5, 2), (24, 3)])
@pytest.mark.parametrize("foreign", [False, True])
def test_dense_torch_matches_dense_reference(tokens: int, top_k: int, foreign: bool) -> None:
    """The small-step form: every expert over every row, each row's k outputs picked; with `foreign`
    some pairs carry ids >= E (another rank's experts) and add nothing."""
    x, top_e, top_w, gate_up_t, down_t = random_moe(tokens, 32, 24, experts=8, top_k=top_k, seed=tokens)
    if foreign:  # this rank holds experts [0, 4): ids 4..7 are foreign, as local_expert_ids marks them
        top_e = torch.where(top_e < 4, top_e, 4)
        gate_up_t, down_t = gate_up_t[:4], down_t[:4]
    args = (x, top_e, top_w, gate_up_t, down_t)

    expected = moe_dense_reference(*args)
    torch.testing.assert_close(moe_dense_torch(*args, foreign=foreign), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(routed_experts(*args, foreign), expected, atol=1e-5, rtol=1e-5)
    assert dense_wins(tokens, down_t.shape[0], top_k)  # so routed_experts took the dense form


@pytest.mark.triton
@pytest.mark.parametrize(("tokens", "top_k", "hidden", "inter"), [(1, 2, 32, 16), (7, 3, 80, 72)])
def test_triton_kernels_match_dense_reference(tokens: int, top_k: int, hidden: int, inter: int) -> None:
    """Odd widths (80, 72: partial tiles), experts with zero tokens, top-k > 1."""
    args = random_moe(tokens, hidden, inter, experts=8, top_k=top_k, seed=hidden)

    out = fused_moe_triton(*args)

    torch.testing.assert_close(out, moe_dense_reference(*args), atol=1e-5, rtol=1e-5)


@pytest.mark.triton
def test_triton_kernels_bf16_close_to_reference() -> None:
    args = random_moe(4, 64, 32, experts=4, top_k=2, seed=9, dtype=torch.bfloat16)

    out = fused_moe_triton(*args)

    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), moe_dense_reference(*args).float(), atol=3e-2, rtol=3e-2)


def test_misshapen_input_is_refused_with_a_message() -> None:
    x, top_e, top_w, gate_up_t, down_t = random_moe(3, 32, 16, experts=4, top_k=2, seed=1)
    with pytest.raises(ValueError, match="gate_up_t"):
        fused_moe_triton(x, top_e, top_w, gate_up_t[:, :, :8], down_t)
    with pytest.raises(ValueError, match="top_e"):
        fused_moe_triton(x, top_e[:2], top_w, gate_up_t, down_t)


def _with_foreign_pairs(args, held: int):
    """Expert parallelism seen from a rank that holds experts [0, held): every pair routed
    elsewhere carries the id `held` (foreign)."""
    x, top_e, top_w, gate_up_t, down_t = args
    foreign = top_e >= held
    return (x, torch.where(foreign, held, top_e), top_w, gate_up_t[:held], down_t[:held]), foreign


def _only_local_pairs(args, foreign: torch.Tensor):
    """The same sum with the foreign pairs' weights zeroed, on every expert: what a rank adds."""
    x, top_e, top_w, gate_up_t, down_t = args
    return x, top_e, top_w * ~foreign, gate_up_t, down_t


def test_align_pairs_gives_foreign_pairs_no_row() -> None:
    top_e = torch.tensor([[3, 0], [5, 1], [0, 5]])  # 5 = foreign for a rank of 5 experts
    pair_of_row, block_expert = align_pairs(top_e, num_experts=5, block_m=4)
    assert block_expert.tolist()[:3] == [0, 1, 3] and set(block_expert.tolist()[3:]) == {-1}
    assert sorted(p for p in pair_of_row.tolist() if p < 6) == [0, 1, 3, 4]  # pairs 2 and 5: none


@pytest.mark.parametrize(("tokens", "top_k"), [(5, 2), (23, 3)])
def test_foreign_pairs_are_skipped_by_every_form(tokens: int, top_k: int) -> None:
    """A rank's share under expert parallelism = the whole layer with the other ranks' pairs
    weighted 0 (which is how it was computed before: every pair, at the full cost)."""
    whole = random_moe(tokens, 32, 24, experts=8, top_k=top_k, seed=tokens + 1)
    for held in (1, 2, 3):  # routing uses experts 0..3: some pairs on each side
        local, foreign = _with_foreign_pairs(whole, held)
        assert foreign.any() and not foreign.all(), "both kinds of pair occur"
        expected = moe_dense_reference(*_only_local_pairs(whole, foreign))
        torch.testing.assert_close(moe_dense_reference(*local), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(moe_grouped_torch(*local, foreign=True), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(routed_experts(*local, foreign=True), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.triton
def test_triton_kernels_skip_foreign_pairs() -> None:
    whole = random_moe(7, 80, 72, experts=8, top_k=3, seed=5)
    local, foreign = _with_foreign_pairs(whole, 2)
    expected = moe_dense_reference(*_only_local_pairs(whole, foreign))
    torch.testing.assert_close(fused_moe_triton(*local, foreign=True), expected, atol=1e-5, rtol=1e-5)
