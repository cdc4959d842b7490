"""`Finisher`: decides, after each new token, whether a sequence is done and why."""

from __future__ import annotations

from engine.sequence import Sequence
from engine.tokenizer import find_stop


class Finisher:
    def __init__(self, eos_token_ids: frozenset[int], max_model_len: int) -> None:
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len

    def check(self, seq: Sequence, token: int) -> str | None:
        """ "stop" | "length" | None; sets seq.stop_reason for stops."""
        params = seq.params
        if not params.ignore_eos and token in self.eos_token_ids:
            seq.stop_reason = token
            return "stop"
        if token in params.stop_token_ids:
            seq.stop_reason = token
            return "stop"
        if seq.detokenizer is not None and self._hit_stop_string(seq):
            return "stop"
        if len(seq.output_token_ids) >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    @staticmethod
    def _hit_stop_string(seq: Sequence) -> bool:
        decoder = seq.detokenizer
        delta = decoder.add([seq.output_token_ids[-1]])
        if not delta:
            return False
        index = find_stop(decoder.text, seq.params.stop, len(delta))
        if index is None:
            return False
        stop = next(s for s in seq.params.stop if decoder.text.startswith(s, index))
        seq.stop_reason = stop
        decoder.text = decoder.text[:index]  # the stop string is not part of the output text
        return True
