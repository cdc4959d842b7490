"""The transfer interface: descriptors, statuses, results and the abstract backend.

A transfer moves *units* (rows along dim 1) of registered *regions* (tensors whose dim 0 is a
layer and dim 1 a unit, one unit of one layer contiguous). The receiver reserves destination
units and publishes a `TransferDescriptor`; the sender posts (region, layer, source units) as they
become ready and finishes with a manifest that the receiver checks before the transfer is DONE.
Reads (pulling a peer's units) reuse the same descriptor: the holder `expose`s, the reader `read`s.
Failures are values: every wait has a deadline and ends in DONE or FAILED(reason).
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Any

import torch


class TransferStatus(enum.Enum):
    PENDING = "pending"
    TRANSFERRING = "transferring"
    DONE = "done"
    FAILED = "failed"


class TransferError(RuntimeError):
    """A transfer could not be started or continued (bad input, unknown id, dead peer)."""


class UnknownTransfer(TransferError, KeyError):
    def __init__(self, transfer_id: str) -> None:
        super().__init__(f"unknown transfer id {transfer_id!r}")

    def __str__(self) -> str:  # KeyError would quote the message again
        return self.args[0]


@dataclass(frozen=True, slots=True)
class RegionLayout:
    dtype: str  # torch dtype name without the "torch." prefix, e.g. "bfloat16"
    num_layers: int
    num_units: int
    unit_shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "num_layers": self.num_layers,
            "num_units": self.num_units,
            "unit_shape": list(self.unit_shape),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RegionLayout:
        return cls(str(d["dtype"]), int(d["num_layers"]), int(d["num_units"]), tuple(d["unit_shape"]))


@dataclass(frozen=True, slots=True)
class TransferDescriptor:
    """Everything a peer needs to write into (or read from) the publisher's units.

    `dst_units[region]` lists the publisher's unit ids in transfer order (for `expose` they are the
    holder's source units). The first `skip_blocks` units of each region in `skip_regions` are
    already present at the destination and are neither sent nor checked. `secret` binds the
    transfer to its reservation: the receiver drops a connection whose first frame lacks it, before
    it allocates anything. Whoever holds the descriptor may write (or read) these units, so it
    travels only between cluster members.
    """

    transfer_id: str
    backend: str
    address: bytes
    dst_units: dict[str, tuple[int, ...]]
    layouts: dict[str, RegionLayout]
    deadline_unix_s: float
    skip_blocks: int = 0
    skip_regions: tuple[str, ...] = ("kv",)
    secret: str = ""

    def skipped(self, region: str) -> int:
        return self.skip_blocks if region in self.skip_regions else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "transfer_id": self.transfer_id,
            "backend": self.backend,
            "address": self.address.hex(),
            "dst_units": {r: list(u) for r, u in self.dst_units.items()},
            "layouts": {r: lay.to_dict() for r, lay in self.layouts.items()},
            "deadline_unix_s": self.deadline_unix_s,
            "skip_blocks": self.skip_blocks,
            "skip_regions": list(self.skip_regions),
            "secret": self.secret,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransferDescriptor:
        return cls(
            transfer_id=str(d["transfer_id"]),
            backend=str(d["backend"]),
            address=bytes.fromhex(d["address"]),
            dst_units={r: tuple(int(x) for x in u) for r, u in d["dst_units"].items()},
            layouts={r: RegionLayout.from_dict(v) for r, v in d["layouts"].items()},
            deadline_unix_s=float(d["deadline_unix_s"]),
            skip_blocks=int(d.get("skip_blocks", 0)),
            skip_regions=tuple(d.get("skip_regions", ("kv",))),
            secret=str(d.get("secret", "")),
        )


@dataclass(frozen=True, slots=True)
class TransferResult:
    status: TransferStatus
    reason: str = ""
    first_token: int | None = None
    extras: dict[str, int | str] = field(default_factory=dict)


class SendHandle(abc.ABC):
    """Sender side of one transfer. `post` is asynchronous; `finish` flushes and sends the manifest."""

    @abc.abstractmethod
    def post(self, region: str, layer: int, src_units: list[int] | tuple[int, ...]) -> None:
        """Queue src_units of (region, layer); they go to the descriptor's next units, in order."""

    @abc.abstractmethod
    def finish(self, first_token: int, extras: dict[str, int | str] | None = None) -> None:
        """Flush every post and send the manifest; raises TransferError when the transfer failed."""

    @abc.abstractmethod
    def abort(self, reason: str) -> None:
        """Tell the receiver the transfer is FAILED(reason); never raises."""


class TransferBackend(abc.ABC):
    name: str = "abstract"

    @abc.abstractmethod
    def register(self, regions: dict[str, torch.Tensor]) -> None: ...

    # receiver side
    @abc.abstractmethod
    def expect(
        self,
        transfer_id: str,
        dst_units: dict[str, list[int]],
        deadline_s: float,
        *,
        skip_blocks: int = 0,
        skip_regions: tuple[str, ...] = ("kv",),
    ) -> TransferDescriptor: ...

    @abc.abstractmethod
    def status(self, transfer_id: str) -> tuple[TransferStatus, str]: ...

    @abc.abstractmethod
    def wait(self, transfer_id: str, timeout_s: float) -> TransferResult: ...

    @abc.abstractmethod
    def forget(self, transfer_id: str) -> None: ...

    # sender side
    @abc.abstractmethod
    def open_send(self, descriptor: TransferDescriptor) -> SendHandle: ...

    # reads
    @abc.abstractmethod
    def expose(
        self, transfer_id: str, src_units: dict[str, list[int]], deadline_s: float
    ) -> TransferDescriptor: ...

    @abc.abstractmethod
    def read(
        self, descriptor: TransferDescriptor, dst_units_local: dict[str, list[int]]
    ) -> TransferResult: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> TransferBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
