"""Registered memory seen as bytes: region -> [layer, unit, unit_bytes] uint8 views, plus unit runs.

Regions live in host or device (cuda) memory. Host bytes go on the wire as they are; device bytes
move device-to-device (local), straight from the device (ucx with CUDA transports) or through a
staging ring of host buffers (kvtransfer/staging.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvtransfer.base import RegionLayout, TransferError


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def layout_of(tensor: torch.Tensor) -> RegionLayout:
    return RegionLayout(dtype_name(tensor.dtype), tensor.shape[0], tensor.shape[1], tuple(tensor.shape[2:]))


def _byte_view(name: str, tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() < 2:
        raise TransferError(f"region {name!r} needs dims [layer, unit, ...], got shape {tuple(tensor.shape)}")
    if tensor.numel() and not tensor[0, 0].is_contiguous():
        raise TransferError(f"region {name!r}: one unit of one layer must be contiguous")
    flat = (tensor.flatten(2) if tensor.dim() > 2 else tensor.unsqueeze(-1)).view(torch.uint8)
    if flat.shape[1] > 1 and flat.stride(1) != flat.shape[2]:
        # Runs of consecutive units travel as one buffer, so units must be adjacent in memory.
        raise TransferError(f"region {name!r}: consecutive units must be adjacent in memory")
    return flat


class RegionSet:
    """The regions a backend registered, addressable by (region, layer, unit) as byte tensors."""

    def __init__(self, regions: dict[str, torch.Tensor]) -> None:
        if not regions:
            raise TransferError("register() needs at least one region")
        self.tensors = dict(regions)
        self.layouts = {name: layout_of(t) for name, t in regions.items()}
        self.bytes = {name: _byte_view(name, t) for name, t in regions.items()}

    def check_units(self, units: dict[str, list[int]] | dict[str, tuple[int, ...]]) -> None:
        for region, ids in units.items():
            if region not in self.layouts:
                raise TransferError(f"unknown region {region!r}; registered: {sorted(self.layouts)}")
            n = self.layouts[region].num_units
            bad = [u for u in ids if not 0 <= int(u) < n]
            if bad:
                raise TransferError(f"region {region!r}: unit ids {bad[:5]} out of range [0, {n})")
            if len(set(ids)) != len(ids):
                raise TransferError(f"region {region!r}: duplicate unit ids")

    def run_view(self, region: str, layer: int, first_unit: int, count: int) -> torch.Tensor:
        """Bytes of units [first_unit, first_unit + count) of one layer (contiguous)."""
        layout = self.layouts[region]
        if not 0 <= layer < layout.num_layers:
            raise TransferError(f"region {region!r}: layer {layer} out of range [0, {layout.num_layers})")
        view = self.bytes[region][layer, first_unit : first_unit + count]
        return view.reshape(-1)

    def on_device(self, region: str) -> bool:
        return self.tensors[region].device.type != "cpu"

    @property
    def device(self) -> torch.device | None:
        """The device of the device regions (None: all in host memory)."""
        devices = {t.device for t in self.tensors.values() if t.device.type != "cpu"}
        if len(devices) > 1:
            raise TransferError(f"regions span several devices: {sorted(map(str, devices))}")
        return next(iter(devices), None)

    def unit_bytes(self, region: str) -> int:
        return self.bytes[region].shape[2]


@dataclass(frozen=True, slots=True)
class Run:
    """`count` units starting at transfer position `index`: source units src..src+count-1,
    destination units dst..dst+count-1 (both consecutive, so each side is one contiguous buffer)."""

    index: int
    src: int
    dst: int
    count: int


def runs(index0: int, src_units: list[int], dst_units: list[int]) -> list[Run]:
    """Group positions index0.. into maximal runs consecutive on both sides."""
    out: list[Run] = []
    for k, (s, d) in enumerate(zip(src_units, dst_units, strict=True)):
        last = out[-1] if out else None
        if last is not None and s == last.src + last.count and d == last.dst + last.count:
            out[-1] = Run(last.index, last.src, last.dst, last.count + 1)
        else:
            out.append(Run(index0 + k, s, d, 1))
    return out
