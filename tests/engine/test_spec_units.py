"""Pieces of speculative decoding against independent references: rejection sampling reproduces
the target distribution (chi-square), greedy acceptance, the verify chunk's per-position states
equal plain decode steps, the slot pool's promote/free, and MTP head loading."""

from __future__ import annotations

import pytest
import torch

from engine.cache.state_pool import OutOfSlots
from engine.cache.tensors import CacheTensors
from engine.loader import load_model
from engine.model_runner import ModelRunner, SeqChunk
from engine.models.mtp import MtpCheckpointError, MtpHead, MtpKv, mtp_canonical
from engine.models.mtp_attention import CachedGroup
from engine.speculative.acceptance import accept_greedy_tokens, accept_sampled, greedy_tokens
from engine.speculative.decoder import SpecMetrics
from engine.speculative.slots import SpecSlotPool
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(120)

# Chi-square critical value for 15 degrees of freedom at p = 0.001 (fixed seed: deterministic).
CHI2_15_P001 = 37.70


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token outside the target's support was emitted"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def test_rejection_sampling_reproduces_the_target_distribution() -> None:
    """Two positions, vocabulary 4: the emitted (token 1, token 2) pairs follow p1 x p2 (16
    cells) although the drafts come from a quite different q."""
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    q = torch.tensor([[0.1, 0.1, 0.4, 0.4], [0.7, 0.1, 0.1, 0.1]])
    counts = torch.zeros(4, 4)
    n = 20000
    for _ in range(n):
        drafts = [int(torch.multinomial(q[j], 1, generator=gen)) for j in range(2)]
        emitted = accept_sampled(p, q, drafts, gen)
        while len(emitted) < 2:  # what the next step would sample from the target
            emitted.append(int(torch.multinomial(p[len(emitted)], 1, generator=gen)))
        counts[emitted[0], emitted[1]] += 1
    joint = (p[0][:, None] * p[1][None, :]).reshape(-1)
    assert chi_square(counts.reshape(-1), joint) < CHI2_15_P001


def test_greedy_acceptance_is_the_longest_agreeing_prefix() -> None:
    logits = torch.full((4, 10), -1.0)
    for row, best in enumerate([3, 5, 7, 9]):
        logits[row, best] = 1.0
    best = greedy_tokens(logits).tolist()
    assert accept_greedy_tokens(best, [3, 5, 7]) == [3, 5, 7, 9]
    assert accept_greedy_tokens(best, [3, 6, 7]) == [3, 5]
    assert accept_greedy_tokens(best, [4, 5, 7]) == [3]


@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5_text"])
def test_verify_chunk_states_equal_decode_steps(model_type: str) -> None:
    cfg, model = load_model(tiny_checkpoint(model_type))
    ids = torch.randint(0, cfg.vocab_size, (24,), generator=torch.Generator().manual_seed(1)).tolist()
    pages = [0, 1]

    def prefilled() -> ModelRunner:
        runner = ModelRunner(model, CacheTensors.allocate(cfg, 8, 8, 16))
        runner.forward([SeqChunk(ids[:20], 0, pages, 0)])
        return runner

    plain = prefilled()
    step_logits, step_states = [], []
    for pos in range(20, 24):
        step_logits.append(plain.forward([SeqChunk([ids[pos]], pos, pages, 0)])[0])
        step_states.append((plain.cache.conv[:, 0].clone(), plain.cache.ssm[:, 0].clone()))
    spec = prefilled()
    slots = [0, 5, 2, 7]
    logits = spec.forward([SeqChunk(ids[20:24], 20, pages, 0, slots)], all_logits=True)
    torch.testing.assert_close(logits, torch.stack(step_logits), atol=2e-5, rtol=0)
    for slot, (conv, ssm) in zip(slots, step_states, strict=True):
        torch.testing.assert_close(spec.cache.conv[:, slot], conv, atol=2e-5, rtol=0)
        torch.testing.assert_close(spec.cache.ssm[:, slot], ssm, atol=2e-5, rtol=0)
    assert spec.cache.state_copies == 0


def test_verify_chunk_needs_one_slot_per_token() -> None:
    cfg, model = load_model(tiny_checkpoint("qwen3_next"))
    runner = ModelRunner(model, CacheTensors.allocate(cfg, 4, 4, 16))
    with pytest.raises(ValueError, match="step slot"):
        runner.forward([SeqChunk([1, 2, 3], 5, [0], 0, [0, 1])])
    with pytest.raises(ValueError, match="share a state slot"):
        runner.forward([SeqChunk([1, 2], 5, [0], 0, [0, 1]), SeqChunk([4], 5, [1], 1)])


def test_slot_pool_promotes_and_frees_groups() -> None:
    pool = SpecSlotPool(range(2), range(10, 14))
    live = pool.allocate()
    assert pool.attach_spares(live, 2) and pool.spares(live) == [10, 11]
    pool.promote(live, 11)
    assert pool.spares(11) == [10, live] and pool.num_free == 1
    other = pool.allocate()
    assert pool.attach_spares(other, 2) and not pool.attach_spares(other, 3)
    with pytest.raises(OutOfSlots):
        pool.allocate()
    with pytest.raises(ValueError):
        pool.promote(11, 13)  # not its spare
    pool.free(11)  # the whole group, each id back to its own range
    assert pool.num_free == 1 and pool.spare_pool.num_free == 2 and pool.is_free(live)
    pool.free(other)
    assert pool.num_free == 2 and pool.spare_pool.num_free == 4


def test_mtp_head_loads_and_reports_bad_weights() -> None:
    cfg, model = load_model(tiny_checkpoint("qwen3_next"))
    assert cfg.mtp_num_hidden_layers == 1
    head = MtpHead.from_model(model)
    assert head is not None and head.w["fc.weight"].shape == (2 * cfg.hidden_size, cfg.hidden_size)
    assert mtp_canonical(cfg, {}) is None  # no mtp.* tensors: no speculation
    broken = dict(model.extra_weights)
    del broken["mtp.fc.weight"]
    with pytest.raises(MtpCheckpointError, match="mtp.fc.weight"):
        mtp_canonical(cfg, broken)
    broken = dict(model.extra_weights, **{"mtp.norm.weight": torch.zeros(3)})
    with pytest.raises(MtpCheckpointError, match="shape"):
        mtp_canonical(cfg, broken)


def test_mtp_drafting_form_equals_training_form() -> None:
    """The head's drafting path (inference: cached attention over each sequence's MtpKv, fused
    norms, the rope table, one rope over q and k) gives the training path's outputs (autograd
    ops, dense causal attention over the rows): a catch-up over several rows per sequence, then a
    one-row draft step, at positions past the rope table's first size."""
    cfg, model = load_model(tiny_checkpoint("qwen3_next"))
    head = MtpHead.from_model(model)
    gen = torch.Generator().manual_seed(3)
    starts, lengths = [300, 10], [5, 3]
    total = [n + 1 for n in lengths]  # the catch-up rows, then one draft row each
    hidden = [torch.randn(n, cfg.hidden_size, generator=gen) for n in total]
    tokens = [torch.randint(0, cfg.vocab_size, (n,), generator=gen) for n in total]
    reference = []
    for h, t, start, n in zip(hidden, tokens, starts, total, strict=True):
        with torch.enable_grad():  # the training path
            out = head.forward(h, t, torch.arange(start, start + n), [(None, 0, n)])
        reference.append(out.detach())
    kvs = [MtpKv(cfg, start, torch.float32, torch.device("cpu")) for start in starts]
    for kv, start, n in zip(kvs, starts, total, strict=True):
        kv.ensure(start + n)

    def drafting(first: list[int], count: list[int]) -> torch.Tensor:
        rows = [slice(f, f + c) for f, c in zip(first, count, strict=True)]
        groups, row = [], 0
        for kv, start, f, c in zip(kvs, starts, first, count, strict=True):
            groups.append(CachedGroup(kv, row, row + c, start + f))
            row += c
        positions = torch.cat(
            [torch.arange(s + r.start, s + r.stop) for s, r in zip(starts, rows, strict=True)]
        )
        with torch.inference_mode():
            return head.forward(
                torch.cat([h[r] for h, r in zip(hidden, rows, strict=True)]),
                torch.cat([t[r] for t, r in zip(tokens, rows, strict=True)]),
                positions,
                groups,
            )

    catch_up = drafting([0, 0], lengths)
    step = drafting(lengths, [1, 1])
    # A catch-up returns each sequence's last row (its K/V of every row is what the step reads).
    expected_catch_up = torch.stack([ref[n - 1] for ref, n in zip(reference, lengths, strict=True)])
    torch.testing.assert_close(catch_up, expected_catch_up, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step, torch.stack([ref[-1] for ref in reference]), atol=1e-5, rtol=1e-5)


def test_engine_option_range() -> None:
    from engine.engine_config import EngineConfig

    with pytest.raises(ValueError, match="num_speculative_tokens"):
        EngineConfig(num_speculative_tokens=5)


def test_acceptance_is_counted_per_draft_position() -> None:
    metrics = SpecMetrics()
    for drafted, accepted in ((2, 1), (2, 2), (1, 0), (2, 0)):
        metrics.record(drafted, accepted)
    snapshot = metrics.snapshot()
    # position 0 was drafted 4 times and kept twice; position 1 drafted 3 times, kept once.
    assert snapshot["spec_acceptance_per_position"] == [2 / 4, 1 / 3]
    assert snapshot["spec_drafted"] == 7 and snapshot["spec_accepted"] == 3
    assert snapshot["spec_mean_acceptance_length"] == (3 + 4) / 4  # accepted + one token per verify


def test_greedy_tokens_take_the_first_of_tied_maxima_as_argmax() -> None:
    """The verify's greedy targets must be the sampler's `argmax` exactly, ties and NaN included
    (rows of few distinct values tie often), strided rows too."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(300):
        rows, vocab = (
            int(torch.randint(1, 30, (1,), generator=gen)),
            int(torch.randint(2, 3000, (1,), generator=gen)),
        )
        logits = torch.randint(0, 4, (rows, vocab), generator=gen).float()
        if trial % 5 == 0:
            logits[0, int(torch.randint(0, vocab, (1,), generator=gen))] = float("nan")
        if trial % 7 == 0:
            logits = logits[:, ::2]
        assert torch.equal(greedy_tokens(logits), logits.argmax(dim=-1))
