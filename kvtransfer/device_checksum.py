"""`dev64`: the checksum of device regions, computed where the bytes are (GPU memory), no copy.

dev64(bytes) = (sum over 32-bit little-endian words w_i of w_i * m_i + n * K) mod 2^64, with odd
multipliers m_i = (i * G + 1) | 1 from the word position and n the byte count. A change of one
word changes the sum (an odd multiplier times a non-zero difference below 2^32 is non-zero mod
2^64), a swap of two different words almost always does, and the sum does not depend on how the
bytes are split into runs, so sender and receiver (whose unit runs differ) agree. Integer sums wrap
mod 2^64 in torch on every device, so the CPU computes the same value (the receiver of a device
sender may hold host memory). Regions whose unit size is not a multiple of 4 use 1-byte words.
"""

from __future__ import annotations

import torch

from kvtransfer.regions import RegionSet, runs

_MASK64 = (1 << 64) - 1
_G = 0x9E3779B97F4A7C15 - (1 << 64)  # the golden-ratio constant as a signed int64
_K = 0x7F4A7C159E3779B9
CHUNK_WORDS = 1 << 22  # words per reduction: bounds the int64 temporaries (32 MiB)


def _run_sum(view: torch.Tensor, first_word: int, word_bytes: int) -> int:
    """sum(w_i * m_i) mod 2^64 over one contiguous byte run whose first word is `first_word`."""
    words = view.view(torch.int32) if word_bytes == 4 else view
    total = 0
    for start in range(0, words.numel(), CHUNK_WORDS):
        chunk = words[start : start + CHUNK_WORDS].to(torch.int64)
        if word_bytes == 4:
            chunk &= 0xFFFFFFFF
        index = torch.arange(
            first_word + start, first_word + start + chunk.numel(), dtype=torch.int64, device=chunk.device
        )
        multipliers = (index * _G + 1) | 1
        total += int((chunk * multipliers).sum().item())
    return total & _MASK64


def dev64(regions: RegionSet, region: str, layer: int, units: list[int]) -> int:
    """dev64 of the units' bytes of one layer, in the given order."""
    unit_bytes = regions.unit_bytes(region)
    word_bytes = 4 if unit_bytes % 4 == 0 else 1
    total, offset = 0, 0
    for run in runs(0, units, units):
        view = regions.run_view(region, layer, run.src, run.count)
        total += _run_sum(view, offset // word_bytes, word_bytes)
        offset += view.numel()
    return (total + offset * _K) & _MASK64
