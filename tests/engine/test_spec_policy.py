"""The adaptive draft policy: its choice by expected tokens per measured second, unit by unit, and in
the engine, where greedy output stays equal to plain decoding whatever it chooses, and a clock that
makes verifies expensive (or cheap) turns speculation off (or keeps it on)."""

from __future__ import annotations

import pytest

from engine.sampling_params import SamplingParams
from engine.speculative.policy import AdaptivePolicy
from tests.engine.spec_helpers import engine, prompt, run, use_oracle
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(300)


def _run(policy: AdaptivePolicy, num_seqs: int, cost: dict[int, float], steps: int) -> list[int]:
    """`steps` steps whose cost is cost[drafts]; the choices made."""
    seen = []
    for _ in range(steps):
        seen.append(policy.choose(num_seqs))
        policy.observe(num_seqs, seen[-1], cost[seen[-1]])
    return seen


def test_measures_each_choice_then_takes_the_most_tokens_per_second() -> None:
    policy = AdaptivePolicy((0, 1, 2), explore_every=1000, smoothing=0.5, acceptance_smoothing=0.05)
    # Unmeasured first; the first step after a switch does not count, so each runs twice.
    assert _run(policy, 8, {0: 1.0, 1: 1.5, 2: 2.5}, 6) == [0, 0, 1, 1, 2, 2]
    for _ in range(200):  # first draft always kept, second never
        policy.record_acceptance(2, 1)
    # E = 1, 2, 2 tokens per step for 1.0, 1.5, 2.5 s: one draft wins.
    assert policy.expected_tokens(1) == pytest.approx(2.0, abs=1e-3)
    # one draft now costs 3 s: its first step after the switch is not counted, the second makes
    # its cost 2.25 s (smoothed), and plain (1 token per 1 s) wins
    assert _run(policy, 8, {0: 1.0, 1: 3.0, 2: 2.5}, 4) == [1, 1, 0, 0]
    assert policy.choose(3) == 0  # another batch-size bucket: unmeasured again


def test_explores_the_other_choices_now_and_then() -> None:
    policy = AdaptivePolicy((0, 2), explore_every=8)
    choices = _run(policy, 1, {0: 1.0, 2: 10.0}, 4 + 32)[4:]
    assert choices.count(2) == 8 and choices.count(0) == 24  # two steps in every eight


def test_the_first_step_after_a_switch_is_not_a_cost_sample() -> None:
    policy = AdaptivePolicy((0, 2))
    policy.observe(8, 0, 1.0)
    policy.observe(8, 0, 1.0)
    policy.observe(8, 2, 50.0)  # a catch-up after plain steps
    policy.observe(8, 2, 2.0)
    assert policy.costs[4] == {0: 1.0, 2: 2.0}


def test_choices_must_include_plain_decoding() -> None:
    with pytest.raises(ValueError, match="include 0"):
        AdaptivePolicy((1, 2))


class StepClock:
    """A fake step clock (read at the start and the end of each step): a step costs 1, plus
    `per_draft` for each draft it verified."""

    def __init__(self, decoder, per_draft: float) -> None:
        self.decoder, self.per_draft = decoder, per_draft
        self.now, self.calls, self.drafted_before = 0.0, 0, 0

    def __call__(self) -> float:
        self.calls += 1
        if self.calls % 2:  # a step starts
            self.drafted_before = self.decoder.metrics.drafted
        else:  # it ends: charge it by its drafts
            self.now += 1.0 + self.per_draft * (self.decoder.metrics.drafted - self.drafted_before)
        return self.now


@pytest.mark.parametrize(("per_draft", "speculates"), [(5.0, False), (0.0, True)])
def test_engine_keeps_greedy_output_and_follows_the_costs(per_draft: float, speculates: bool) -> None:
    model_dir = tiny_checkpoint("qwen3_next")
    prompts = {f"r{i}": prompt(9 + 5 * i, seed=40 + i) for i in range(3)}
    params_steps = 40
    plain = run(engine(model_dir, enable_prefix_cache=False), prompts, _params(params_steps))
    spec = engine(model_dir, k=2, enable_prefix_cache=False, adaptive_speculation=True)
    use_oracle(spec, plain, prompts)  # drafts right up to a varying index: acceptance ~1/3..2/3
    spec.spec._clock = StepClock(spec.spec, per_draft)
    assert run(spec, prompts, _params(params_steps)) == plain
    by_drafts = spec.metrics()["spec_steps_by_drafts"]
    plain_steps, speculative_steps = by_drafts[0], sum(by_drafts[1:])
    if speculates:
        assert speculative_steps > 3 * plain_steps
    else:
        assert plain_steps > 3 * speculative_steps


def _params(tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
