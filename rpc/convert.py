"""Conversions between wire messages (baton_pb) and in-process dataclasses (engine, kvtransfer)."""

from __future__ import annotations

from typing import Any

from baton_pb.v1 import common_pb2
from engine.sampling_params import NUMBER_FIELDS, SamplingParams


def sampling_from_proto(message: common_pb2.SamplingParams, default_max_tokens: int = 256):
    """Builds and validates engine SamplingParams; raises ValueError with a message."""
    options: dict[str, Any] = {name: getattr(message, name) for name in NUMBER_FIELDS if message.HasField(name)}
    options.setdefault("max_tokens", default_max_tokens)
    if message.stop_token_ids:
        options["stop_token_ids"] = list(message.stop_token_ids)
    if message.stop:
        options["stop"] = list(message.stop)
    if message.ignore_eos:
        options["ignore_eos"] = True
    params = SamplingParams(**options)
    params.validate()
    return params


def sampling_to_proto(params, max_tokens: int) -> common_pb2.SamplingParams:
    """Engine SamplingParams (already validated by the router) to the wire, with the tokens left."""
    message = common_pb2.SamplingParams(
        stop_token_ids=list(params.stop_token_ids), stop=list(params.stop), ignore_eos=params.ignore_eos
    )
    for name in NUMBER_FIELDS:
        value = getattr(params, name)
        if value is not None:  # seed and logprobs are optional
            setattr(message, name, value)
    message.max_tokens = max_tokens
    return message


def logprobs_to_proto(logprobs) -> list[common_pb2.TokenLogprob]:
    """Engine logprobs (a list of dicts token → logprob, or None) → the chosen tokens' entries."""
    if not logprobs:
        return []
    result = []
    for entry in logprobs:
        if hasattr(entry, "token_id") and hasattr(entry, "logprob"):  # engine.sampler.Logprob
            result.append(
                common_pb2.TokenLogprob(
                    token_id=int(entry.token_id),
                    logprob=float(entry.logprob),
                    top_token_ids=list(getattr(entry, "top_token_ids", ())),
                    top_logprobs=list(getattr(entry, "top_logprobs", ())),
                )
            )
        elif isinstance(entry, dict):
            result.extend(common_pb2.TokenLogprob(token_id=int(t), logprob=float(lp)) for t, lp in entry.items())
        elif isinstance(entry, tuple | list) and len(entry) == 2:
            result.append(common_pb2.TokenLogprob(token_id=int(entry[0]), logprob=float(entry[1])))
    return result
