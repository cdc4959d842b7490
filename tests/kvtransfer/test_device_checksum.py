"""dev64, the checksum of device regions: equal to a plain-Python reference of its formula,
independent of how the units are laid out (sender and receiver runs differ), changed by any byte
flip or unit swap, and the same on the CPU as on a GPU."""

from __future__ import annotations

import random

import pytest
import torch

from kvtransfer.device_checksum import _G, _K, dev64
from kvtransfer.regions import RegionSet

MASK = (1 << 64) - 1


def reference(data: bytes, word_bytes: int) -> int:
    """The formula, word by word, in Python integers."""
    total = 0
    for i in range(len(data) // word_bytes):
        word = int.from_bytes(data[i * word_bytes : (i + 1) * word_bytes], "little")
        multiplier = ((i * (_G & MASK) + 1) & MASK) | 1
        total += word * multiplier
    return (total + len(data) * _K) & MASK


def region(units: int, unit_shape: tuple[int, ...], dtype=torch.bfloat16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((2, units, *unit_shape), generator=gen).to(dtype)


def unit_bytes(t: torch.Tensor, layer: int, units: list[int]) -> bytes:
    return b"".join(t[layer, u].contiguous().view(torch.uint8).numpy().tobytes() for u in units)


@pytest.mark.parametrize(("shape", "dtype", "word"), [((4, 6), torch.bfloat16, 4), ((3,), torch.uint8, 1)])
def test_equals_the_reference_formula(shape, dtype, word):
    t = region(8, shape, torch.float32).mul(50).to(dtype) if dtype == torch.uint8 else region(8, shape, dtype)
    regions = RegionSet({"r": t})
    units = [5, 6, 0, 3]
    assert dev64(regions, "r", 1, units) == reference(unit_bytes(t, 1, units), word)


def test_independent_of_where_the_units_live():
    src = region(10, (2, 8))
    dst = torch.zeros_like(src)
    src_units, dst_units = [2, 3, 4, 8], [9, 0, 5, 6]
    dst[:, dst_units] = src[:, src_units]
    a = dev64(RegionSet({"kv": src}), "kv", 0, src_units)
    b = dev64(RegionSet({"kv": dst}), "kv", 0, dst_units)
    assert a == b


def test_any_flipped_byte_or_swapped_unit_changes_it():
    t = region(6, (4, 4))
    regions = RegionSet({"kv": t})
    units = [0, 1, 2, 3]
    before = dev64(regions, "kv", 0, units)
    raw = t.view(torch.uint8)
    rng = random.Random(0)
    for _ in range(20):
        unit, offset, bit = rng.randrange(4), rng.randrange(raw.shape[-1]), 1 << rng.randrange(8)
        raw[0, unit, -1, offset] ^= bit
        assert dev64(regions, "kv", 0, units) != before
        raw[0, unit, -1, offset] ^= bit
    assert dev64(regions, "kv", 0, units) == before
    assert dev64(regions, "kv", 0, [1, 0, 2, 3]) != before


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_gpu_computes_the_cpus_value():
    t = region(64, (16, 128))
    units = list(range(5, 60))
    assert dev64(RegionSet({"kv": t.cuda()}), "kv", 1, units) == dev64(RegionSet({"kv": t}), "kv", 1, units)
