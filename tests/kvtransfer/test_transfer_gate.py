"""A transfer is bound to its reservation: the secret, mandatory checksums, bounded connections.

Every test here plays the stranger: it holds a descriptor's address and transfer id (both easy to
learn) but not its secret, or it speaks the wire protocol directly with forged frames."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import struct
import threading
import time

import pytest
import torch

from kvtransfer.base import TransferStatus
from kvtransfer.factory import create_backend
from kvtransfer.tcp_gate import GateLimits
from tests.kvtransfer.helpers import make_regions, post_all, zeros_like_regions

pytestmark = pytest.mark.timeout(60)
HEADER = struct.Struct("!4sI")
UNITS = {"kv": [0, 1, 2, 3], "conv": [1], "ssm": [1]}


def frame(msg: dict) -> bytes:
    body = json.dumps(msg).encode()
    return HEADER.pack(b"BKV1", len(body)) + body


def pair(make_backend, seed: int):
    src = make_regions(seed)
    dst = zeros_like_regions(src)
    sender, receiver = make_backend(), make_backend()
    sender.register(src)
    receiver.register(dst)
    return sender, receiver, src, dst


def test_a_sender_without_the_secret_writes_nothing(make_backend):
    sender, receiver, src, dst = pair(make_backend, 21)
    desc = receiver.expect("victim", UNITS, 10.0)
    assert len(desc.secret) >= 32
    forged = sender.open_send(dataclasses.replace(desc, secret="0" * 32))
    post_all(forged, src, UNITS, chunks=1)
    try:
        forged.finish(7)
    except Exception:  # noqa: BLE001 - the receiver hung up on it: that is the point
        pass
    assert receiver.wait("victim", 0.5).status is TransferStatus.PENDING
    assert all(not t.any() for t in dst.values()), "a forged sender wrote into the reservation"
    real = sender.open_send(desc)  # the reservation is still good for its real sender
    post_all(real, src, UNITS, chunks=2)
    real.finish(8)
    result = receiver.wait("victim", 10.0)
    assert result.status is TransferStatus.DONE and result.first_token == 8, result.reason


def test_a_read_without_the_secret_gets_nothing(make_backend):
    holder, reader, src, dst = pair(make_backend, 22)
    desc = holder.expose("held", {"kv": [5, 6], "conv": [2], "ssm": [2]}, deadline_s=10.0)
    local = {"kv": [0, 1], "conv": [0], "ssm": [0]}
    # ucx drops a stranger's read unanswered, so the reader waits out its own (short) deadline
    forged = dataclasses.replace(desc, secret="guess", deadline_unix_s=time.time() + 1.0)
    result = reader.read(forged, local)
    assert result.status is TransferStatus.FAILED
    assert all(not t.any() for t in dst.values())
    assert reader.read(desc, local).status is TransferStatus.DONE


def test_null_checksums_are_refused_over_tcp():
    """The attack of the report, at the transfer layer: random bytes, `"checksum": null`."""
    receiver = create_backend("tcp")
    try:
        dst = zeros_like_regions(make_regions(23))
        receiver.register(dst)
        desc = receiver.expect("t", {"kv": [2]}, 10.0)
        layout = receiver.regions.layouts["kv"]
        unit_bytes = receiver.regions.unit_bytes("kv")
        with socket.create_connection(desc.address.decode().rsplit(":", 1)) as sock:  # type: ignore[arg-type]
            sock.sendall(frame({"kind": "open", "transfer_id": "t", "secret": desc.secret}))
            entries = []
            for layer in range(layout.num_layers):
                sock.sendall(frame({"kind": "data", "region": "kv", "layer": layer, "runs": [[0, 1]]}))
                sock.sendall(os.urandom(unit_bytes))
                entries.append(
                    {"region": "kv", "layer": layer, "positions": [[0, 1]], "num_bytes": unit_bytes, "checksum": None}
                )
            manifest = {"layouts": {"kv": layout.to_dict()}, "entries": entries, "first_token": 1, "extras": {}}
            sock.sendall(frame({"kind": "finish", "manifest": manifest}))
            result = receiver.wait("t", 10.0)
        assert result.status is TransferStatus.FAILED and "checksum missing" in result.reason
    finally:
        receiver.close()


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_idle_and_oversized_connections_cost_no_thread_and_no_buffer():
    limits = GateLimits(max_pending=64, max_pending_per_peer=32, handshake_timeout_s=2.0)
    receiver = create_backend("tcp", gate=limits)
    try:
        receiver.register(zeros_like_regions(make_regions(24)))
        host, port = receiver.address.decode().rsplit(":", 1)
        threads_before, rss_before = _threads(), _rss_bytes()
        idle = [socket.create_connection((host, int(port))) for _ in range(300)]
        huge = []
        for _ in range(16):  # each announces a 64 MiB first frame and sends 1 MiB of it
            sock = socket.create_connection((host, int(port)))
            sock.sendall(HEADER.pack(b"BKV1", 64 << 20))
            try:
                sock.sendall(os.urandom(1 << 20))
            except OSError:
                pass  # already dropped
            huge.append(sock)
        time.sleep(0.5)
        assert receiver.gate.pending <= limits.max_pending_per_peer
        assert _threads() - threads_before <= 2
        assert _rss_bytes() - rss_before < 48 << 20
        # a real transfer still gets through, right now
        sender = create_backend("tcp")
        src = make_regions(24)
        sender.register(src)
        units = {"kv": [0, 1], "conv": [0], "ssm": [0]}
        handle = sender.open_send(receiver.expect("real", units, 10.0))
        post_all(handle, src, units, chunks=1)
        handle.finish(3)
        assert receiver.wait("real", 10.0).status is TransferStatus.DONE
        sender.close()
        time.sleep(limits.handshake_timeout_s + 0.5)
        assert receiver.gate.pending == 0, "idle connections outlived the handshake timeout"
        for sock in idle + huge:
            sock.close()
    finally:
        receiver.close()


def test_authorized_transfers_beyond_the_pool_wait_their_turn():
    receiver = create_backend("tcp", gate=GateLimits(max_serving=3))
    sender = create_backend("tcp")
    try:
        src = make_regions(25, num_pages=64)
        receiver.register(zeros_like_regions(src))
        sender.register(src)
        names = [f"t{i}" for i in range(10)]
        descs = {n: receiver.expect(n, {"kv": [i]}, 30.0) for i, n in enumerate(names)}
        serving_seen = 0

        def run(name):
            handle = sender.open_send(descs[name])
            for layer in range(src["kv"].shape[0]):
                handle.post("kv", layer, [40 + int(name[1:])])
            handle.finish(1)

        workers = [threading.Thread(target=run, args=(n,)) for n in names]
        for w in workers:
            w.start()
        while any(w.is_alive() for w in workers):
            serving = [t for t in threading.enumerate() if t.name.startswith("tcp-serve")]
            serving_seen = max(serving_seen, len(serving))
            time.sleep(0.005)
        for i, name in enumerate(names):
            result = receiver.wait(name, 20.0)
            assert result.status is TransferStatus.DONE, result.reason
            assert torch.equal(receiver.regions.tensors["kv"][:, i], src["kv"][:, 40 + i])
        assert 1 <= serving_seen <= 3, f"{serving_seen} serving threads"
        second = socket.create_connection(descs["t0"].address.decode().rsplit(":", 1))  # type: ignore[arg-type]
        second.sendall(frame({"kind": "open", "transfer_id": "t0", "secret": descs["t0"].secret}))
        assert second.recv(1) == b"", "a finished transfer was opened again"
        second.close()
    finally:
        sender.close()
        receiver.close()
