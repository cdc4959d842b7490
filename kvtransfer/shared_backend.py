"""What every backend shares: registered regions, the receive book and the exposures for reads.

A concrete backend adds its transport: its `address`, `open_send`, `read` and the code that
accepts connections and feeds `stream.receive_into`.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
import uuid

import torch

from kvtransfer.base import (
    TransferBackend,
    TransferDescriptor,
    TransferError,
    TransferResult,
    TransferStatus,
    UnknownTransfer,
)
from kvtransfer.book import ReceiveBook
from kvtransfer.regions import RegionSet


class SharedBackend(TransferBackend):
    def __init__(self, *, corrupt: tuple[str, int] | None = None) -> None:
        self.corrupt = corrupt  # test hook: (region, layer) whose first payload gets a flipped byte
        self.book = ReceiveBook()
        self.regions: RegionSet | None = None
        # transfer id -> (units, deadline (monotonic), secret)
        self._exposed: dict[str, tuple[dict[str, tuple[int, ...]], float, str]] = {}
        self._exposed_lock = threading.Lock()

    @property
    def address(self) -> bytes:
        raise NotImplementedError

    def register(self, regions: dict[str, torch.Tensor]) -> None:
        self.regions = RegionSet(regions)
        self.book.regions = self.regions

    def _require_regions(self) -> RegionSet:
        if self.regions is None:
            raise TransferError("register() the regions first")
        return self.regions

    def _descriptor(
        self,
        transfer_id: str,
        units: dict[str, tuple[int, ...]],
        deadline_s: float,
        skip_blocks: int,
        skip_regions: tuple[str, ...],
        secret: str,
    ) -> TransferDescriptor:
        regions = self._require_regions()
        return TransferDescriptor(
            transfer_id=transfer_id,
            backend=self.name,
            address=self.address,
            dst_units=units,
            layouts={r: regions.layouts[r] for r in units},
            deadline_unix_s=time.time() + deadline_s,
            skip_blocks=skip_blocks,
            skip_regions=tuple(skip_regions),
            secret=secret,
        )

    def expect(
        self,
        transfer_id: str,
        dst_units: dict[str, list[int]],
        deadline_s: float,
        *,
        skip_blocks: int = 0,
        skip_regions: tuple[str, ...] = ("kv",),
    ) -> TransferDescriptor:
        if skip_blocks < 0:
            raise TransferError(f"skip_blocks must be >= 0, got {skip_blocks}")
        units = {r: tuple(int(u) for u in ids) for r, ids in dst_units.items()}
        skip = {r: min(skip_blocks, len(units[r])) for r in skip_regions if r in units}
        record = self.book.open(transfer_id, units, deadline_s, skip)
        return self._descriptor(transfer_id, units, deadline_s, skip_blocks, skip_regions, record.secret)

    def status(self, transfer_id: str) -> tuple[TransferStatus, str]:
        return self.book.status(transfer_id)

    def wait(self, transfer_id: str, timeout_s: float) -> TransferResult:
        return self.book.wait(transfer_id, timeout_s)

    def forget(self, transfer_id: str) -> None:
        with self._exposed_lock:
            exposed = self._exposed.pop(transfer_id, None)
        try:
            self.book.forget(transfer_id)
        except UnknownTransfer:
            if exposed is None:
                raise

    def expose(
        self, transfer_id: str, src_units: dict[str, list[int]], deadline_s: float
    ) -> TransferDescriptor:
        regions = self._require_regions()
        if not 0 < deadline_s < float("inf"):
            raise TransferError(f"deadline_s must be positive and finite, got {deadline_s}")
        units = {r: tuple(int(u) for u in ids) for r, ids in src_units.items()}
        regions.check_units(units)
        secret = secrets.token_hex(16)
        with self._exposed_lock:
            if transfer_id in self._exposed:
                raise TransferError(f"transfer id {transfer_id!r} is already exposed")
            self._exposed[transfer_id] = (units, time.monotonic() + deadline_s, secret)
        return self._descriptor(transfer_id, units, deadline_s, 0, (), secret)

    def exposed_units(self, transfer_id: object, secret: object) -> dict[str, tuple[int, ...]]:
        """The units exposed as `transfer_id`, for a reader that presents its secret."""
        with self._exposed_lock:
            entry = self._exposed.get(str(transfer_id))
        if (
            entry is None
            or time.monotonic() > entry[1]
            or not isinstance(secret, str)
            or not hmac.compare_digest(entry[2].encode(), secret.encode())
        ):
            raise TransferError(f"transfer id {transfer_id!r} is not exposed (unknown, expired or wrong secret)")
        return entry[0]

    def _authorize(self, first: dict) -> bool:
        """Check of a connection's first message: a transfer we expect, or a prefix we expose."""
        if first.get("kind") == "open":
            return self.book.authorized(first.get("transfer_id"), first.get("secret"))
        if first.get("kind") == "read":
            try:
                self.exposed_units(first.get("transfer_id"), first.get("secret"))
            except TransferError:
                return False
            return True
        return False

    def _open_read(self, descriptor: TransferDescriptor, dst_units_local: dict[str, list[int]]) -> str:
        """Book a local record that a read's stream fills; returns its id."""
        units = {r: tuple(int(u) for u in ids) for r, ids in dst_units_local.items()}
        if sorted(units) != sorted(descriptor.dst_units) or any(
            len(units[r]) != len(descriptor.dst_units[r]) for r in units
        ):
            raise TransferError("read(): local units must match the descriptor's regions and unit counts")
        left = descriptor.deadline_unix_s - time.time()
        if left <= 0:
            raise TransferError(f"read(): descriptor {descriptor.transfer_id!r} already expired")
        local_id = f"read:{descriptor.transfer_id}:{uuid.uuid4().hex}"
        record = self.book.open(local_id, units, left, {})
        self.book.begin(local_id, record.secret)
        return local_id

    def _finish_read(self, local_id: str) -> TransferResult:
        result = self.book.wait(local_id, 0.0)
        if result.status not in (TransferStatus.DONE, TransferStatus.FAILED):
            result = TransferResult(TransferStatus.FAILED, "read ended without a manifest")
        self.book.forget(local_id)
        return result

    def close(self) -> None:
        self.book.fail_all("backend closed")
