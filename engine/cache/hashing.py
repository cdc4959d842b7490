"""The only block hasher in Baton: router, prefill and decode workers all key blocks with it.

    h_i = xxh3_64(seed, h_{i-1} as 8 little-endian bytes || tokens of block i as little-endian
                  int32 || digest(extra))

One unsigned 64-bit hash per FULL block; a trailing partial block has no hash. Chaining makes a
hash name the whole prefix up to the end of its block, and `extra` (model id + tenant salt
+ adapter id) is mixed into every block, so different tenants never share a key. The seed is
derived from `HASH_VERSION`: bump it when the scheme changes, so old and new keys cannot collide.
Never Python `hash()` (randomised per process). Torch-free: the router imports this.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence

import numpy as np
import xxhash

HASH_VERSION = 1
_SEED = xxhash.xxh64_intdigest(f"baton-block-hash-v{HASH_VERSION}".encode())
_ROOT_PARENT = 0  # the "previous hash" of the first block when no parent is given
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_U64_MAX = 2**64 - 1


def cache_extra(model_id: str, tenant: str, adapter: str = "") -> bytes:
    """The `extra` bytes of a cache namespace. Fields are length-prefixed so that no two
    different (model, tenant, adapter) triples encode to the same bytes."""
    parts = []
    for name, value in (("model_id", model_id), ("tenant", tenant), ("adapter", adapter)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
        raw = value.encode("utf-8")
        parts.append(len(raw).to_bytes(4, "little") + raw)
    return b"".join(parts)


def pack_tokens(token_ids: Sequence[int]) -> bytes:
    """Token ids as little-endian int32 bytes (the byte order is fixed so hashes are portable)."""
    if hasattr(token_ids, "__array_interface__"):  # numpy: no per-element Python work
        values = np.asarray(token_ids)
        if values.size and (values.min() < -(2**31) or values.max() >= 2**31):
            raise ValueError("token ids must fit in int32")
        return values.astype("<i4", copy=False).tobytes()
    try:
        packed = array("i", token_ids)
    except OverflowError as exc:
        raise ValueError(f"token ids must fit in int32: {exc}") from None
    except TypeError as exc:
        raise TypeError(f"token ids must be ints: {exc}") from None
    if packed.itemsize != 4:  # pragma: no cover - every platform we run on has a 4-byte C int
        raise RuntimeError("array('i') is not 4 bytes on this platform")
    if sys.byteorder != "little":  # pragma: no cover
        packed.byteswap()
    return packed.tobytes()


def block_hashes(
    token_ids: Sequence[int], block_size: int, extra: bytes = b"", parent: int | None = None
) -> list[int]:
    """Chained hashes of the full blocks of `token_ids`.

    `parent` is the hash of the block just before `token_ids[0]` (None = start of a sequence), so
    hashes of a grown sequence can be extended without rehashing its prefix:
    `block_hashes(t[k*bs:], bs, extra, parent=block_hashes(t[:k*bs], bs, extra)[-1])` equals
    `block_hashes(t, bs, extra)[k:]`.
    """
    if not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if not isinstance(extra, (bytes, bytearray)):
        raise TypeError(f"extra must be bytes, got {type(extra).__name__}")
    previous = _ROOT_PARENT if parent is None else parent
    if not isinstance(previous, int) or not 0 <= previous <= _U64_MAX:
        raise ValueError(f"parent must be an unsigned 64-bit int, got {parent!r}")
    num_blocks = len(token_ids) // block_size
    if num_blocks == 0:
        return []
    full = num_blocks * block_size
    data = memoryview(pack_tokens(token_ids if full == len(token_ids) else token_ids[:full]))
    # Digest the namespace once: every block then hashes a fixed 8 bytes of it, whatever its length.
    extra_digest = xxhash.xxh3_64_digest(bytes(extra), seed=_SEED)
    step = 4 * block_size
    digest = xxhash.xxh3_64_intdigest
    hashes = []
    for start in range(0, num_blocks * step, step):
        payload = previous.to_bytes(8, "little") + data[start : start + step] + extra_digest
        previous = digest(payload, seed=_SEED)
        hashes.append(previous)
    return hashes
