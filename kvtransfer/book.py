"""Receiver-side bookkeeping: one record per expected transfer, its status, deadline and checks.

Thread-safe. Transport threads write bytes into the views this book hands out; the service polls
`status`/`wait`. A record only hands out views of its own destination units, so two transfers
never write into each other's memory, and only to a sender that presents the record's secret.
Every manifest entry must carry a checksum: a null checksum fails the transfer.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

import torch

from kvtransfer.base import TransferError, TransferResult, TransferStatus, UnknownTransfer
from kvtransfer.manifest import Manifest, checksum_of
from kvtransfer.regions import RegionSet

TERMINAL = (TransferStatus.DONE, TransferStatus.FAILED)


@dataclass(slots=True)
class Record:
    transfer_id: str
    dst_units: dict[str, tuple[int, ...]]
    skip: dict[str, int]
    deadline_mono: float
    secret: str = ""
    status: TransferStatus = TransferStatus.PENDING
    reason: str = ""
    first_token: int | None = None
    extras: dict[str, int | str] = field(default_factory=dict)
    received: dict[tuple[str, int], set[int]] = field(default_factory=dict)
    has_sender: bool = False

    def result(self) -> TransferResult:
        return TransferResult(self.status, self.reason, self.first_token, dict(self.extras))


class ReceiveBook:
    def __init__(self) -> None:
        self.regions: RegionSet | None = None
        self._records: dict[str, Record] = {}
        self._cond = threading.Condition()

    def open(
        self, transfer_id: str, dst_units: dict[str, tuple[int, ...]], deadline_s: float, skip: dict[str, int]
    ) -> Record:
        """A new record with a fresh secret (`record.secret`), which its sender must present."""
        if self.regions is None:
            raise TransferError("register() the regions before expecting transfers")
        if not 0 < deadline_s < float("inf"):
            raise TransferError(f"deadline_s must be positive and finite, got {deadline_s}")
        # Skipped positions are never written or checked: their ids may be placeholders (-1).
        self.regions.check_units({r: tuple(u)[skip.get(r, 0) :] for r, u in dst_units.items()})
        with self._cond:
            if transfer_id in self._records:
                raise TransferError(f"transfer id {transfer_id!r} is already expected")
            record = Record(transfer_id, dst_units, skip, time.monotonic() + deadline_s, secrets.token_hex(16))
            self._records[transfer_id] = record
            return record

    def _get(self, transfer_id: str) -> Record:
        record = self._records.get(transfer_id)
        if record is None:
            raise UnknownTransfer(transfer_id)
        if record.status not in TERMINAL and time.monotonic() > record.deadline_mono:
            self._fail(record, f"deadline expired ({_progress(record)})")
        return record

    def _fail(self, record: Record, reason: str) -> None:
        if record.status not in TERMINAL:
            record.status, record.reason = TransferStatus.FAILED, reason
            self._cond.notify_all()

    def _active(self, transfer_id: str) -> Record:
        record = self._get(transfer_id)
        if record.status in TERMINAL:
            raise TransferError(f"transfer {transfer_id!r} is {record.status.value}: {record.reason}")
        return record

    def deadline(self, transfer_id: str) -> float:
        with self._cond:
            return self._get(transfer_id).deadline_mono

    def authorized(self, transfer_id: str, secret: object) -> bool:
        """Whether `secret` opens the active, not yet opened transfer `transfer_id` (nothing
        changes, nothing leaks)."""
        with self._cond:
            record = self._records.get(str(transfer_id))
            return (
                record is not None
                and record.status not in TERMINAL
                and not record.has_sender
                and isinstance(secret, str)
                and hmac.compare_digest(record.secret.encode(), secret.encode())
            )

    def begin(self, transfer_id: str, secret: object) -> None:
        if not self.authorized(transfer_id, secret):
            raise TransferError(f"transfer {transfer_id!r}: unknown, finished, or the secret does not match")
        with self._cond:
            record = self._active(transfer_id)
            if record.has_sender:
                raise TransferError(f"transfer {transfer_id!r} already has a sender")
            record.has_sender, record.status = True, TransferStatus.TRANSFERRING
            self._cond.notify_all()

    def dst_views(
        self, transfer_id: str, region: str, layer: int, runs: list[list[int]]
    ) -> list[torch.Tensor]:
        """Byte views for runs [position, count] of (region, layer); marks them received."""
        assert self.regions is not None
        with self._cond:
            record = self._active(transfer_id)
            units = record.dst_units.get(region)
            if units is None:
                raise TransferError(f"transfer {transfer_id!r} has no region {region!r}")
            views = []
            got = record.received.setdefault((region, layer), set())
            for position, count in runs:
                if position < record.skip.get(region, 0) or count < 1 or position + count > len(units):
                    raise TransferError(
                        f"region {region!r}: positions [{position}, {position + count}) outside "
                        f"[{record.skip.get(region, 0)}, {len(units)})"
                    )
                first = units[position]
                if list(units[position : position + count]) != list(range(first, first + count)):
                    raise TransferError(
                        f"region {region!r}: run at position {position} is not consecutive here"
                    )
                views.append(self.regions.run_view(region, layer, first, count))
                got.update(range(position, position + count))
            return views

    def fail(self, transfer_id: str, reason: str) -> None:
        with self._cond:
            record = self._records.get(transfer_id)
            if record is not None:
                self._fail(record, reason)

    def complete(self, transfer_id: str, manifest: Manifest) -> TransferStatus:
        with self._cond:
            record = self._active(transfer_id)
        problem = self._check(record, manifest)  # outside the lock: hashing takes time
        with self._cond:
            record = self._active(transfer_id)
            if problem:
                self._fail(record, problem)
            else:
                record.status, record.first_token = TransferStatus.DONE, manifest.first_token
                record.extras = dict(manifest.extras)
                self._cond.notify_all()
            return record.status

    def _check(self, record: Record, manifest: Manifest) -> str:
        assert self.regions is not None
        entries = {(e.region, e.layer): e for e in manifest.entries}
        for region, units in record.dst_units.items():
            mine, theirs = self.regions.layouts[region], manifest.layouts.get(region)
            if theirs is None or (theirs.dtype, theirs.unit_shape, theirs.num_layers) != (
                mine.dtype,
                mine.unit_shape,
                mine.num_layers,
            ):
                return f"layout mismatch region={region}: sender {theirs}, receiver {mine}"
            expected = tuple(range(record.skip.get(region, 0), len(units)))
            for layer in range(mine.num_layers if expected else 0):
                entry = entries.pop((region, layer), None)
                if entry is None or entry.positions != expected:
                    return f"incomplete region={region} layer={layer}: manifest lacks units"
                if record.received.get((region, layer), set()) != set(expected):
                    return f"incomplete region={region} layer={layer}: not every unit arrived"
                if entry.num_bytes != len(expected) * self.regions.unit_bytes(region):
                    return f"byte count mismatch region={region} layer={layer}"
                if entry.checksum is None:
                    return f"checksum missing region={region} layer={layer}: checksums are mandatory"
                if entry.checksum != checksum_of(entry.algo, self.regions, region, layer, [units[p] for p in expected]):
                    return f"checksum mismatch region={region} layer={layer}"
        if entries:
            return f"manifest names units this transfer did not expect: {sorted(entries)[:3]}"
        return ""

    def status(self, transfer_id: str) -> tuple[TransferStatus, str]:
        with self._cond:
            record = self._get(transfer_id)
            return record.status, record.reason

    def wait(self, transfer_id: str, timeout_s: float) -> TransferResult:
        end = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            while True:
                record = self._get(transfer_id)
                if record.status in TERMINAL:
                    return record.result()
                left = min(end, record.deadline_mono) - time.monotonic()
                if left <= 0 and time.monotonic() >= end:
                    return record.result()
                self._cond.wait(timeout=max(0.001, min(left, 0.25)))

    def forget(self, transfer_id: str) -> None:
        with self._cond:
            record = self._records.pop(transfer_id, None)
            if record is None:
                raise UnknownTransfer(transfer_id)
            self._fail(record, "forgotten")

    def fail_all(self, reason: str) -> None:
        with self._cond:
            for record in self._records.values():
                self._fail(record, reason)


def _progress(record: Record) -> str:
    got = sum(len(s) for s in record.received.values())
    return f"{got} layer-units received" if record.has_sender else "no sender connected"
