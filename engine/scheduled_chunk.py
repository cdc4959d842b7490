"""`ScheduledChunk`: the tokens of one sequence computed in one step. Its own module so that the
scheduler (which makes them) and the prefix cache (which checkpoints at their ends) both import it."""

from __future__ import annotations

from dataclasses import dataclass

from engine.sequence import Sequence


@dataclass(slots=True)
class ScheduledChunk:
    seq: Sequence
    start: int  # first position computed this step (== seq.num_computed_tokens)
    end: int  # one past the last position computed

    @property
    def samples(self) -> bool:
        """The chunk reaches the end of the known tokens, so its last logits give the next token."""
        return self.end == self.seq.num_tokens
