"""The manifest: what the sender says it sent, checked by the receiver against what arrived.

Checksums are xxh3-64 of the bytes of one (region, layer), its units taken in transfer order.
Host regions are hashed in place. Device regions are hashed on the staged host bytes as they pass
(`digest`); a direct device path (local device-to-device, ucx over CUDA transports) sends none,
since hashing would need a full extra copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import xxhash

from kvtransfer.base import RegionLayout
from kvtransfer.regions import RegionSet, runs


def to_ranges(positions: tuple[int, ...]) -> list[list[int]]:
    """[0, 1, 2, 5] -> [[0, 3], [5, 6]]: keeps manifests small on the wire."""
    out: list[list[int]] = []
    for p in positions:
        if out and out[-1][1] == p:
            out[-1][1] = p + 1
        else:
            out.append([p, p + 1])
    return out


@dataclass(frozen=True, slots=True)
class LayerEntry:
    region: str
    layer: int
    positions: tuple[int, ...]  # transfer positions sent (indices into the descriptor's unit list)
    num_bytes: int
    checksum: int | None  # None when checksums are switched off

    def to_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "layer": self.layer,
            "positions": to_ranges(self.positions),
            "num_bytes": self.num_bytes,
            "checksum": None if self.checksum is None else f"{self.checksum:016x}",
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerEntry:
        checksum = None if d["checksum"] is None else int(d["checksum"], 16)
        positions = tuple(p for start, stop in d["positions"] for p in range(start, stop))
        return cls(d["region"], int(d["layer"]), positions, int(d["num_bytes"]), checksum)


@dataclass(frozen=True, slots=True)
class Manifest:
    layouts: dict[str, RegionLayout]  # the sender's layout (dtype, unit shape) per region
    entries: tuple[LayerEntry, ...]
    first_token: int | None  # None for reads (no token travels with them)
    extras: dict[str, int | str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layouts": {r: lay.to_dict() for r, lay in self.layouts.items()},
            "entries": [e.to_dict() for e in self.entries],
            "first_token": self.first_token,
            "extras": dict(self.extras),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        return cls(
            layouts={r: RegionLayout.from_dict(v) for r, v in d["layouts"].items()},
            entries=tuple(LayerEntry.from_dict(e) for e in d["entries"]),
            first_token=None if d["first_token"] is None else int(d["first_token"]),
            extras=dict(d.get("extras", {})),
        )


def layer_checksum(regions: RegionSet, region: str, layer: int, units: list[int]) -> int:
    """xxh3-64 of the units' bytes, in the given order (runs hashed as one buffer each)."""
    hasher = xxhash.xxh3_64()
    for run in runs(0, units, units):
        hasher.update(regions.run_view(region, layer, run.src, run.count).numpy())
    return hasher.intdigest()


def build_entry(
    regions: RegionSet,
    region: str,
    layer: int,
    placed: dict[int, int],
    with_checksum: bool,
    digest: int | None = None,
) -> LayerEntry:
    """`placed` maps transfer position -> source unit for one (region, layer); `digest` is the
    checksum of a device region's staged bytes (None: not staged)."""
    positions = tuple(sorted(placed))
    units = [placed[p] for p in positions]
    checksum = None
    if with_checksum:
        checksum = digest if regions.on_device(region) else layer_checksum(regions, region, layer, units)
    return LayerEntry(region, layer, positions, len(units) * regions.unit_bytes(region), checksum)
