"""The staging ring, with host tensors standing in for device memory: the bytes arrive identical,
the recorded events show the copy of the next layer running while the previous one is sent (and,
receiving, the next receive running while the previous copy to the device is under way), and
device regions carry dev64 checksums that catch a byte changed on the staged wire."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from kvtransfer.base import TransferStatus
from kvtransfer.book import ReceiveBook
from kvtransfer.device_checksum import dev64
from kvtransfer.regions import RegionSet
from kvtransfer.staging import RingPool, StagedReader, StagedWriter, StagingOptions, host_copy
from kvtransfer.tcp import TcpBackend, TcpLink
from tests.kvtransfer.helpers import (
    assert_units_equal,
    make_regions,
    post_all,
    random_units,
    zeros_like_regions,
)

pytestmark = pytest.mark.timeout(60)
HOST = StagingOptions(slots=3, slot_bytes=1024, pin=False)


class Events:
    def __init__(self) -> None:
        self.log: list[tuple[str, int, str]] = []
        self._lock = threading.Lock()

    def add(self, kind: str, index: int, edge: str) -> None:
        with self._lock:
            self.log.append((kind, index, edge))

    def at(self, kind: str, index: int, edge: str) -> int:
        return self.log.index((kind, index, edge))


def layers(count: int, nbytes: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(count)
    return [torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=gen) for _ in range(count)]


def test_writer_sends_identical_bytes_and_copies_layer_l_plus_1_while_layer_l_is_sent():
    events, wire = Events(), bytearray()
    copies = iter(range(100))
    sends = iter(range(100))

    def slow_copy(dst, src):  # a device -> host copy
        index = next(copies)
        events.add("copy", index, "start")
        time.sleep(0.02)
        dst.copy_(src)
        events.add("copy", index, "end")
        return lambda: None

    def slow_send(data):  # the socket
        index = next(sends) if len(data) == 1024 else -1
        events.add("send", index, "start")
        time.sleep(0.05)
        wire.extend(bytes(data))
        events.add("send", index, "end")

    device = layers(5, 1024)  # one slot per layer
    writer = StagedWriter(slow_send, slow_copy, RingPool(HOST).take())
    for index, layer in enumerate(device):
        writer.write(b"hdr%d" % index)
        writer.write_views([layer])
    writer.flush()
    writer.close()
    expected = b"".join(b"hdr%d" % i + bytes(layer.numpy()) for i, layer in enumerate(device))
    assert bytes(wire) == expected
    for layer in range(len(device) - 1):  # the copy of layer L+1 starts before layer L has left
        assert events.at("copy", layer + 1, "start") < events.at("send", layer, "end"), events.log


def test_writer_bounds_the_ring_and_reports_a_dead_socket():
    sent = []

    def failing_send(data):
        sent.append(len(data))
        raise ConnectionResetError("peer went away")

    writer = StagedWriter(failing_send, host_copy, RingPool(HOST).take())
    with pytest.raises(ConnectionError, match="peer went away"):
        for _ in range(50):  # more chunks than slots: the caller must learn of the failure
            writer.write_views(layers(1, 4096))
        writer.flush()
    writer.close()


def test_reader_receives_the_next_chunk_while_the_last_one_is_copied_to_the_device():
    events = Events()
    device_out = [torch.zeros(1024, dtype=torch.uint8) for _ in range(5)]
    source = layers(5, 1024)
    incoming = iter(bytes(t.numpy()) for t in source)
    copies, receives = iter(range(100)), iter(range(100))
    pool = ThreadPoolExecutor(2)

    def async_copy(dst, src):  # a host -> device copy on a stream: returns before it is done
        index = next(copies)

        def run():
            events.add("copy", index, "start")
            time.sleep(0.05)
            dst.copy_(src)
            events.add("copy", index, "end")

        return pool.submit(run).result

    def recv_exact(buf):
        index = next(receives)
        events.add("recv", index, "start")
        time.sleep(0.01)
        buf[:] = next(incoming)
        events.add("recv", index, "end")

    reader = StagedReader(async_copy, RingPool(HOST).take())
    for view in device_out:
        reader.read_views([view], recv_exact)
    reader.drain()
    pool.shutdown()
    assert all(torch.equal(a, b) for a, b in zip(source, device_out, strict=True))
    for index in range(len(source) - 1):
        assert events.at("recv", index + 1, "start") < events.at("copy", index, "end"), events.log


def staged_pair(seed: int, **options):
    src = make_regions(seed)
    dst = zeros_like_regions(src)
    sender = TcpBackend(staging=HOST, stage_copy=host_copy, **options)
    receiver = TcpBackend(staging=HOST, stage_copy=host_copy)
    sender.register(src)
    receiver.register(dst)
    return sender, receiver, src, dst


@pytest.mark.parametrize("seed", [0, 1])
def test_tcp_through_the_ring_delivers_identical_bytes(seed):
    sender, receiver, src, dst = staged_pair(seed)
    try:
        rng = random.Random(seed)
        n_pages = rng.randint(4, 16)
        src_units, dst_units = random_units(rng, src, n_pages), random_units(rng, src, n_pages)
        handle = sender.open_send(receiver.expect("s", dst_units, deadline_s=20.0))
        post_all(handle, src, src_units, chunks=3)
        handle.finish(first_token=9)
        result = receiver.wait("s", timeout_s=20.0)
        assert result.status is TransferStatus.DONE, result.reason
        assert_units_equal(src, src_units, dst, dst_units)
        exposed = {"kv": src_units["kv"][:3], "conv": src_units["conv"], "ssm": src_units["ssm"]}
        local = {"kv": [20, 21, 23], "conv": [5], "ssm": [5]}
        pulled = receiver.read(sender.expose("r", exposed, deadline_s=20.0), local)
        assert pulled.status is TransferStatus.DONE, pulled.reason
        assert_units_equal(src, exposed, dst, local)
        deadline = time.monotonic() + 5  # rings go back to their pools for the next transfer
        while time.monotonic() < deadline and not (sender._rings._free and receiver._rings._free):
            time.sleep(0.01)
        assert sender._rings._free and receiver._rings._free
    finally:
        sender.close()
        receiver.close()


def test_device_regions_are_checksummed_in_place_with_dev64(monkeypatch):
    """Regions taken for device memory: the manifest names dev64, computed on the sender's units,
    and the receiver's dev64 of what arrived agrees (DONE)."""
    monkeypatch.setattr(RegionSet, "on_device", lambda self, region: True)
    manifests = []
    complete = ReceiveBook.complete
    monkeypatch.setattr(
        ReceiveBook,
        "complete",
        lambda self, tid, manifest: (manifests.append(manifest), complete(self, tid, manifest))[1],
    )
    sender, receiver, src, dst = staged_pair(3)
    try:
        units = {"kv": [0, 1, 2, 7, 8], "conv": [1], "ssm": [2]}
        handle = sender.open_send(receiver.expect("d", units, 20.0))
        post_all(handle, src, units, chunks=2)
        handle.finish(1)
        result = receiver.wait("d", 20.0)
        assert result.status is TransferStatus.DONE, result.reason
        assert_units_equal(src, units, dst, units)
        (manifest,) = manifests
        assert manifest.entries and all(entry.checksum is not None for entry in manifest.entries)
        for entry in manifest.entries:
            assert entry.algo == "dev64"
            assert entry.checksum == dev64(sender.regions, entry.region, entry.layer, units[entry.region])
    finally:
        sender.close()
        receiver.close()


def test_a_byte_changed_on_the_staged_wire_fails_the_transfer(monkeypatch):
    """A byte flipped between the sender's ring and the receiver's: a checksum mismatch."""
    monkeypatch.setattr(RegionSet, "on_device", lambda self, region: True)
    send = TcpLink._send_armed
    flipped = []

    def corrupting_send(self, data):
        if not flipped and bytes(data[:4]) != b"BKV1":  # the first payload chunk, not a frame
            flipped.append(True)
            data = bytearray(data)
            data[0] ^= 0xFF
            data = memoryview(data)
        send(self, data)

    monkeypatch.setattr(TcpLink, "_send_armed", corrupting_send)
    sender, receiver, src, dst = staged_pair(4)
    try:
        units = {"kv": [0, 1], "conv": [1], "ssm": [2]}
        handle = sender.open_send(receiver.expect("c", units, 20.0))
        post_all(handle, src, units, chunks=1)
        handle.finish(1)
        result = receiver.wait("c", 20.0)
        assert flipped and result.status is TransferStatus.FAILED
        assert result.reason.startswith("checksum mismatch region=")
    finally:
        sender.close()
        receiver.close()
