"""The manifest: what the sender says it sent, checked by the receiver against what arrived.

Checksums cover the bytes of one (region, layer), its units taken in transfer order, computed
where the bytes are: xxh3-64 for host regions, `dev64` (kvtransfer/device_checksum.py) on the GPU
for device regions, so no path copies bytes only to hash them. The entry names its algorithm; the
receiver computes the same one on what arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import xxhash

from kvtransfer.base import RegionLayout, TransferError
from kvtransfer.device_checksum import dev64
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
    checksum: int | None  # None is refused by the receiver (checksums are mandatory)
    algo: str = "xxh3"  # "xxh3" (host regions) | "dev64" (device regions)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "region": self.region,
            "layer": self.layer,
            "positions": to_ranges(self.positions),
            "num_bytes": self.num_bytes,
            "checksum": None if self.checksum is None else f"{self.checksum:016x}",
        }
        if self.algo != "xxh3":
            out["algo"] = self.algo
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerEntry:
        checksum = None if d["checksum"] is None else int(d["checksum"], 16)
        positions = tuple(p for start, stop in d["positions"] for p in range(start, stop))
        return cls(
            d["region"], int(d["layer"]), positions, int(d["num_bytes"]), checksum, d.get("algo", "xxh3")
        )


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
    """xxh3-64 of the units' bytes, in the given order (runs hashed as one buffer each). Only a
    device receiver of a host sender hashes device bytes this way (through a copy); same-kind
    pairs never copy."""
    hasher = xxhash.xxh3_64()
    for run in runs(0, units, units):
        hasher.update(regions.run_view(region, layer, run.src, run.count).cpu().numpy())
    return hasher.intdigest()


def algo_for(regions: RegionSet, region: str) -> str:
    return "dev64" if regions.on_device(region) else "xxh3"


def checksum_of(algo: str, regions: RegionSet, region: str, layer: int, units: list[int]) -> int:
    if algo == "xxh3":
        return layer_checksum(regions, region, layer, units)
    if algo == "dev64":
        return dev64(regions, region, layer, units)
    raise TransferError(f"unknown checksum algorithm {algo!r}")


def build_entry(regions: RegionSet, region: str, layer: int, placed: dict[int, int]) -> LayerEntry:
    """`placed` maps transfer position -> source unit for one (region, layer)."""
    positions = tuple(sorted(placed))
    units = [placed[p] for p in positions]
    algo = algo_for(regions, region)
    checksum = checksum_of(algo, regions, region, layer, units)
    return LayerEntry(region, layer, positions, len(units) * regions.unit_bytes(region), checksum, algo)
