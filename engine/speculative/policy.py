"""How many drafts a speculative step makes: always k (`FixedPolicy`), or what pays (`AdaptivePolicy`).

A step with j drafts per sequence emits on average E_j = 1 + a_1 + ... + a_j tokens per sequence
(a_i: the recent acceptance rate at draft position i) and costs c_j seconds, measured on this
engine at this batch size. `AdaptivePolicy` picks the j with the most tokens per second, E_j / c_j;
j = 0 is a plain decode step (the MTP head then catches up later, in one pass). Where a verify of
k + 1 rows costs more than its expected tokens are worth (a CPU at batch 8: the verify rows cost
like three times the sequences, the two MTP passes come on top), it decodes plainly instead of
losing to plain decoding.

Output never depends on the policy: verification decides every token, whatever was drafted.
Costs are measured before they are used (each choice per batch-size bucket), and every
`explore_every` steps another choice than the best runs twice and is re-measured, so the
estimates follow the load on the machine and the acceptance of the text being generated. The
first step after a switch is not measured (after plain steps the MTP catches up on all of them).
"""

from __future__ import annotations

import time


class FixedPolicy:
    """Always k drafts (`EngineConfig.adaptive_speculation` off)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def choose(self, num_seqs: int) -> int:
        return self.k

    def record_acceptance(self, drafted: int, accepted: int) -> None:
        pass

    def observe(self, num_seqs: int, drafts: int, seconds: float) -> None:
        pass


class AdaptivePolicy:
    def __init__(
        self,
        choices: tuple[int, ...],
        *,
        explore_every: int = 32,
        smoothing: float = 0.1,
        acceptance_smoothing: float = 0.02,
        clock=time.perf_counter,
    ) -> None:
        if not choices or 0 not in choices or any(j < 0 for j in choices):
            raise ValueError(f"draft choices must include 0 and be non-negative, got {choices!r}")
        self.choices = tuple(sorted(set(choices)))
        self.k = self.choices[-1]
        self.explore_every = explore_every
        self.smoothing = smoothing
        self.acceptance_smoothing = acceptance_smoothing
        self.clock = clock
        self.acceptance = [1.0] * self.k  # optimistic until measured: speculation gets tried
        self.costs: dict[int, dict[int, float]] = {}  # batch bucket -> drafts -> seconds per step
        self.samples: dict[tuple[int, int], int] = {}  # (bucket, drafts) -> steps measured
        self.steps: dict[int, int] = {}  # bucket -> steps chosen
        self.previous: int | None = None  # drafts of the last observed step

    def expected_tokens(self, drafts: int) -> float:
        """Tokens per sequence a step with `drafts` drafts emits on average (1 + acceptances)."""
        return 1.0 + sum(self.acceptance[:drafts])

    def choose(self, num_seqs: int) -> int:
        bucket = _bucket(num_seqs)
        step = self.steps[bucket] = self.steps.get(bucket, 0) + 1
        costs = self.costs.get(bucket, {})
        unmeasured = [j for j in self.choices if j not in costs]
        if unmeasured:
            return unmeasured[0]
        best = max(self.choices, key=lambda j: self.expected_tokens(j) / costs[j])
        if step % self.explore_every in (0, 1):  # re-measure the others of this bucket in turn
            others = [j for j in self.choices if j != best]
            return others[(step // self.explore_every) % len(others)]
        return best

    def record_acceptance(self, drafted: int, accepted: int) -> None:
        """One verify: of its `drafted` drafts, the first `accepted` were kept."""
        for i in range(min(drafted, self.k)):
            hit = 1.0 if i < accepted else 0.0
            self.acceptance[i] += self.acceptance_smoothing * (hit - self.acceptance[i])

    def observe(self, num_seqs: int, drafts: int, seconds: float) -> None:
        """A step of `num_seqs` decoding sequences, each with `drafts` drafts, took `seconds`."""
        switched, self.previous = drafts != self.previous, drafts
        if switched:  # the first step after a switch is no steady cost: after plain steps the MTP
            return  # catches up on every position since, so it is measured on the second
        bucket = _bucket(num_seqs)
        costs = self.costs.setdefault(bucket, {})
        count = self.samples[bucket, drafts] = self.samples.get((bucket, drafts), 0) + 1
        # the mean of the first samples, then a moving average (one cold first step does not stick)
        weight = max(self.smoothing, 1.0 / count)
        old = costs.get(drafts, seconds)
        costs[drafts] = old + weight * (seconds - old)


def _bucket(num_seqs: int) -> int:
    """Batch sizes 1, 2-3, 4-7, 8-15, ...: a step's cost is measured per bucket."""
    return max(num_seqs, 1).bit_length()
