"""Conversions between wire messages (baton_pb) and in-process dataclasses (engine, kvtransfer)."""

from __future__ import annotations

from typing import Any

from baton_pb.v1 import common_pb2, worker_pb2

SAMPLING_FIELDS = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "max_tokens",
    "logprobs",
)


def sampling_from_proto(message: common_pb2.SamplingParams, default_max_tokens: int = 256):
    """Builds and validates engine SamplingParams; raises ValueError with a message."""
    from engine.sampling_params import SamplingParams

    options: dict[str, Any] = {name: getattr(message, name) for name in SAMPLING_FIELDS if message.HasField(name)}
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


def descriptor_to_proto(descriptor) -> worker_pb2.TransferDescriptor:
    return worker_pb2.TransferDescriptor(
        transfer_id=descriptor.transfer_id,
        backend=descriptor.backend,
        address=descriptor.address,
        units=[worker_pb2.RegionUnits(name=name, units=list(units)) for name, units in descriptor.dst_units.items()],
        layouts=[
            worker_pb2.RegionLayout(
                name=name,
                dtype=layout.dtype,
                num_layers=layout.num_layers,
                num_units=layout.num_units,
                unit_shape=list(layout.unit_shape),
            )
            for name, layout in descriptor.layouts.items()
        ],
        deadline_unix_s=descriptor.deadline_unix_s,
        skip_blocks=descriptor.skip_blocks,
    )


def descriptor_from_proto(message: worker_pb2.TransferDescriptor):
    from kvtransfer.base import RegionLayout, TransferDescriptor

    return TransferDescriptor(
        transfer_id=message.transfer_id,
        backend=message.backend,
        address=bytes(message.address),
        dst_units={region.name: tuple(region.units) for region in message.units},
        layouts={
            layout.name: RegionLayout(
                dtype=layout.dtype,
                num_layers=layout.num_layers,
                num_units=layout.num_units,
                unit_shape=tuple(layout.unit_shape),
            )
            for layout in message.layouts
        },
        deadline_unix_s=message.deadline_unix_s,
        skip_blocks=message.skip_blocks,
    )


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
