"""`SpecMetrics`: what speculative decoding counts (the engine's `spec_*` metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SpecMetrics:
    verifies: int = 0  # sequence-steps that verified drafts
    drafted: int = 0
    accepted: int = 0  # drafts accepted
    emitted: int = 0  # tokens emitted by verifies (accepted + one correction/bonus each)
    state_copies: int = 0  # CacheTensors state copies made on the speculative path (must stay 0)
    drafted_at: list[int] = field(default_factory=list)  # per draft position j: drafts made there
    accepted_at: list[int] = field(default_factory=list)  # ... and accepted there
    steps_by_drafts: list[int] = field(default_factory=list)  # decode-only steps, by drafts per sequence

    def count_step(self, drafts: int) -> None:
        self.steps_by_drafts.extend([0] * (drafts + 1 - len(self.steps_by_drafts)))
        self.steps_by_drafts[drafts] += 1

    def record(self, drafted: int, accepted: int) -> None:
        """One verify: `drafted` drafts, the first `accepted` of them kept."""
        self.verifies += 1
        self.drafted += drafted
        self.accepted += accepted
        self.emitted += accepted + 1
        for counts in (self.drafted_at, self.accepted_at):
            counts.extend([0] * (drafted - len(counts)))
        for j in range(drafted):
            self.drafted_at[j] += 1
            self.accepted_at[j] += j < accepted

    def snapshot(self) -> dict[str, float]:
        return {
            "spec_verifies": self.verifies,
            "spec_drafted": self.drafted,
            "spec_accepted": self.accepted,
            "spec_acceptance_rate": self.accepted / self.drafted if self.drafted else 0.0,
            "spec_mean_acceptance_length": self.emitted / self.verifies if self.verifies else 0.0,
            "spec_state_copies": self.state_copies,
            "spec_steps_by_drafts": list(self.steps_by_drafts),
            "spec_acceptance_per_position": [
                a / d for a, d in zip(self.accepted_at, self.drafted_at, strict=True)
            ],
        }
