"""SamplingParams <-> wire: one list of fields (engine/sampling_params.py) serves both directions."""

from __future__ import annotations

from dataclasses import fields

from baton_pb.v1 import common_pb2
from engine.sampling_params import NUMBER_FIELDS, SamplingParams
from rpc.convert import sampling_from_proto, sampling_to_proto


def test_every_option_survives_the_wire_both_ways():
    # values exact in float32: the wire's numbers are proto floats
    params = SamplingParams(
        temperature=0.75, top_k=5, top_p=0.5, min_p=0.0625, repetition_penalty=1.25, presence_penalty=0.25,
        frequency_penalty=-0.5, seed=42, stop_token_ids=(3, 4), stop=("END",), max_tokens=99, logprobs=2,
        ignore_eos=True,
    )  # fmt: skip
    message = sampling_to_proto(params, max_tokens=12)
    assert message.max_tokens == 12
    back = sampling_from_proto(common_pb2.SamplingParams.FromString(message.SerializeToString()))
    assert back == SamplingParams(
        **{**{f.name: getattr(params, f.name) for f in fields(params)}, "max_tokens": 12}
    )


def test_unset_optional_numbers_stay_unset_on_the_wire():
    message = sampling_to_proto(SamplingParams(), max_tokens=4)
    assert not message.HasField("seed") and not message.HasField("logprobs")
    assert sampling_from_proto(message) == SamplingParams(max_tokens=4)


def test_the_wire_message_and_the_engine_name_the_same_options():
    wire = {f.name for f in common_pb2.SamplingParams.DESCRIPTOR.fields}
    engine = {f.name for f in fields(SamplingParams)}
    assert wire == engine
    for name in NUMBER_FIELDS:  # each number is an optional (presence-tracked) field on the wire
        assert common_pb2.SamplingParams.DESCRIPTOR.fields_by_name[name].has_presence, name
