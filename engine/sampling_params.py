"""Per-request sampling options. Plain data: the engine calls `validate()` before accepting a request,
so every bad value becomes a `ValueError` that names the field (the workers map it to INVALID_ARGUMENT)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

MAX_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 or -1 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # 1 = off; applied to tokens of the prompt and the output
    presence_penalty: float = 0.0  # applied to tokens of the output
    frequency_penalty: float = 0.0
    seed: int | None = None  # same seed -> same tokens, whatever else shares the batch
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    stop: tuple[str, ...] = field(default_factory=tuple)  # stop strings, not included in the text
    max_tokens: int = 16
    logprobs: int | None = None  # None = off; n >= 0: chosen token's logprob + the top n
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        # Accept lists (and a single stop string) but store tuples, so params stay hashable/immutable.
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        if isinstance(self.stop_token_ids, list):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def uses_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def validate(self, vocab_size: int | None = None) -> SamplingParams:
        """Raises ValueError naming the first bad field; returns self so calls chain."""
        _check_number("temperature", self.temperature, 0.0, None)
        _check_int("top_k", self.top_k)
        if self.top_k < -1:
            raise ValueError(f"top_k must be -1, 0 (off) or a positive integer, got {self.top_k}")
        _check_number("top_p", self.top_p, 0.0, 1.0)
        if self.top_p <= 0.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        _check_number("min_p", self.min_p, 0.0, 1.0)
        _check_number("repetition_penalty", self.repetition_penalty, 0.0, None)
        if self.repetition_penalty <= 0.0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        _check_number("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_number("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if self.seed is not None:
            _check_int("seed", self.seed)
            if not 0 <= self.seed < 2**63:
                raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        _check_int("max_tokens", self.max_tokens)
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs)
            if not 0 <= self.logprobs <= MAX_LOGPROBS:
                raise ValueError(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")
        self._validate_stops(vocab_size)
        return self

    def _validate_stops(self, vocab_size: int | None) -> None:
        if not isinstance(self.stop_token_ids, tuple):
            raise ValueError(f"stop_token_ids must be a list of ints, got {self.stop_token_ids!r}")
        for token_id in self.stop_token_ids:
            _check_int("stop_token_ids", token_id)
            if token_id < 0 or (vocab_size is not None and token_id >= vocab_size):
                raise ValueError(f"stop_token_ids: {token_id} is not a token id of this model")
        if not isinstance(self.stop, tuple):
            raise ValueError(f"stop must be a string or a list of strings, got {self.stop!r}")
        for text in self.stop:
            if not isinstance(text, str) or not text:
                raise ValueError(f"stop strings must be non-empty strings, got {text!r}")


def _check_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")


def _check_number(name: str, value: object, low: float | None, high: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")


# The one list of sampling options, read by the wire conversion (rpc/convert.py) and the CLI.
LIST_FIELDS = ("stop_token_ids", "stop")
FLAG_FIELDS = ("ignore_eos",)
# Each holds one number; on the wire (common.proto) each is an optional field of the same name.
NUMBER_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(SamplingParams) if f.name not in LIST_FIELDS + FLAG_FIELDS
)
NUMBER_TYPES: dict[str, type] = {
    f.name: int if f.type.startswith("int") else float for f in fields(SamplingParams) if f.name in NUMBER_FIELDS
}
