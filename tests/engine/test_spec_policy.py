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


def test_measures_each_choice_then_takes_the_most_tokens_per_second() -> None:
    policy = AdaptivePolicy((0, 1, 2), explore_every=1000, smoothing=0.5, acceptance_smoothing=0.05)
    seen = []
    for _ in range(3):
        seen.append(policy.choose(8))
        policy.observe(8, seen[-1], {0: 1.0, 1: 1.5, 2: 2.5}[seen[-1]])
    assert seen == [0, 1, 2]  # unmeasured first
    for _ in range(200):  # first draft always kept, second never
        policy.record_acceptance(2, 1)
    # E = 1, 2, 2 tokens per step for 1.0, 1.5, 2.5 s: one draft wins.
    assert policy.expected_tokens(1) == pytest.approx(2.0, abs=1e-3)
    assert policy.choose(8) == 1
    policy.observe(8, 1, 3.0)
    policy.observe(8, 1, 3.0)  # one draft now costs ~2.6 s (smoothed): plain wins
    assert policy.choose(8) == 0
    assert policy.choose(3) == 0  # another batch-size bucket: unmeasured again


def test_explores_the_other_choices_now_and_then() -> None:
    policy = AdaptivePolicy((0, 2), explore_every=4)
    for j in (0, 2):
        policy.choose(1)
        policy.observe(1, j, 1.0 if j == 0 else 10.0)
    choices = [policy.choose(1) for _ in range(16)]
    assert choices.count(2) == 4 and choices.count(0) == 12


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
