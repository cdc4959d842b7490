"""Descriptor / manifest round trips through JSON, and the unit-run grouping."""

from __future__ import annotations

import json

import torch

from kvtransfer.base import RegionLayout, TransferDescriptor
from kvtransfer.manifest import LayerEntry, Manifest, layer_checksum
from kvtransfer.regions import RegionSet, Run, runs


def test_descriptor_round_trips_through_json():
    desc = TransferDescriptor(
        transfer_id="t-1",
        backend="ucx",
        address=bytes(range(256)),
        dst_units={"kv": (4, 5, 9), "ssm": (2,)},
        layouts={
            "kv": RegionLayout("bfloat16", 3, 64, (2, 16, 2, 8)),
            "ssm": RegionLayout("float32", 2, 8, (4, 4)),
        },
        deadline_unix_s=1.5e9,
        skip_blocks=1,
    )
    again = TransferDescriptor.from_dict(json.loads(json.dumps(desc.to_dict())))
    assert again == desc
    assert again.skipped("kv") == 1 and again.skipped("ssm") == 0


def test_manifest_round_trips_and_compresses_positions():
    entry = LayerEntry("kv", 2, (3, 4, 5, 9), 4096, 0xDEADBEEF01234567)
    manifest = Manifest({"kv": RegionLayout("float16", 3, 10, (8,))}, (entry,), None, {"n": 3})
    wire = json.loads(json.dumps(manifest.to_dict()))
    assert wire["entries"][0]["positions"] == [[3, 6], [9, 10]]
    assert Manifest.from_dict(wire) == manifest


def test_runs_merge_only_when_both_sides_are_consecutive():
    assert runs(2, [7, 8, 9, 1], [3, 4, 6, 7]) == [Run(2, 7, 3, 2), Run(4, 9, 6, 1), Run(5, 1, 7, 1)]
    assert runs(0, [5, 6, 7], [1, 2, 3]) == [Run(0, 5, 1, 3)]
    assert runs(0, [], []) == []


def test_checksum_is_of_the_bytes_in_order():
    regions = RegionSet({"kv": torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)})
    forward = layer_checksum(regions, "kv", 1, [0, 1, 2])
    assert forward == layer_checksum(regions, "kv", 1, [0, 1, 2])
    assert forward != layer_checksum(regions, "kv", 1, [2, 1, 0])
    assert forward != layer_checksum(regions, "kv", 0, [0, 1, 2])
