"""Read safetensors files tensor by tensor with plain `read()`s, in file order.

Why not `safe_open`: it memory-maps the file, and every page a tensor was copied from stays mapped
(and counted in the process's RSS) until the file is closed — a whole shard per shard. Here each
tensor is read into its own fresh buffer, which becomes the tensor: one tensor in flight, and the
bytes pass through the identity hasher on the way (`engine/identity.py`).

File layout (the safetensors spec): 8 bytes little-endian header length N, N bytes of JSON
`{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`, then the data; the
offsets are relative to the end of the header.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024


class Hasher(Protocol):
    def update(self, data: bytes | memoryview) -> None: ...


class SafetensorsError(ValueError):
    """A file that is not a well-formed safetensors file."""


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offset of the first byte
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True, slots=True)
class FileHeader:
    path: Path
    raw: bytes  # the 8-byte length and the JSON, exactly as in the file
    entries: tuple[TensorEntry, ...]  # in file (offset) order

    @property
    def data_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries)


def read_header(path: Path) -> FileHeader:
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise SafetensorsError(f"{path}: too short for a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise SafetensorsError(f"{path}: header of {length} bytes is implausible")
        text = f.read(length)
    try:
        header = json.loads(text)
    except ValueError as error:
        raise SafetensorsError(f"{path}: header is not JSON ({error})") from None
    base = 8 + length
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')!r}")
        begin, end = info["data_offsets"]
        entries.append(TensorEntry(name, info["dtype"], tuple(info["shape"]), base + begin, base + end))
    entries.sort(key=lambda e: e.begin)
    return FileHeader(path, prefix + text, tuple(entries))


def read_entry(f, entry: TensorEntry, hasher: Hasher | None = None) -> torch.Tensor:
    """The tensor of `entry`, read from the open binary file `f` into a fresh buffer."""
    buffer = torch.empty(entry.nbytes, dtype=torch.uint8)
    f.seek(entry.begin)
    view = memoryview(buffer.numpy())
    done = 0
    while done < entry.nbytes:
        n = f.readinto(view[done:])
        if not n:
            raise SafetensorsError(f"{f.name}: file ends inside tensor {entry.name}")
        done += n
    if hasher is not None:
        hasher.update(view)
    return buffer.view(DTYPES[entry.dtype]).reshape(entry.shape)


def stream_file(
    header: FileHeader, hasher: Hasher | None = None
) -> Iterator[tuple[TensorEntry, torch.Tensor]]:
    """(entry, tensor) for every tensor of the file in offset order; the header and then each
    tensor's bytes go through `hasher`."""
    if hasher is not None:
        hasher.update(header.raw)
    with open(header.path, "rb", buffering=0) as f:
        for entry in header.entries:
            yield entry, read_entry(f, entry, hasher)


def read_one(header: FileHeader, name: str) -> torch.Tensor:
    """One tensor by name (random access; used for the small fp8 scale tensors)."""
    for entry in header.entries:
        if entry.name == name:
            with open(header.path, "rb", buffering=0) as f:
                return read_entry(f, entry)
    raise KeyError(name)
