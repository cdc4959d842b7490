"""One suite, every backend: bytes, skips, manifest checks, deadlines, concurrency, reads."""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch

from kvtransfer.base import TransferError, TransferStatus, UnknownTransfer
from tests.kvtransfer.helpers import (
    assert_units_equal,
    make_regions,
    post_all,
    random_units,
    zeros_like_regions,
)

pytestmark = pytest.mark.timeout(30)


def pair(make_backend, seed: int, **sender_options):
    src, dst = make_regions(seed), None
    dst = zeros_like_regions(src)
    sender, receiver = make_backend(**sender_options), make_backend()
    sender.register(src)
    receiver.register(dst)
    return sender, receiver, src, dst


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bytes_arrive_identical_for_random_layouts(make_backend, seed):
    sender, receiver, src, dst = pair(make_backend, seed)
    rng = random.Random(seed)
    n_pages = rng.randint(1, 12)
    src_units, dst_units = random_units(rng, src, n_pages), random_units(rng, src, n_pages)
    desc = receiver.expect(f"t{seed}", dst_units, deadline_s=10.0)
    assert receiver.status(f"t{seed}")[0] is TransferStatus.PENDING
    handle = sender.open_send(desc)
    post_all(handle, src, src_units, chunks=rng.randint(1, 4))
    handle.finish(first_token=1234, extras={"num_tokens": 77, "note": "x"})
    result = receiver.wait(f"t{seed}", timeout_s=10.0)
    assert result.status is TransferStatus.DONE, result.reason
    assert (result.first_token, result.extras) == (1234, {"num_tokens": 77, "note": "x"})
    assert_units_equal(src, src_units, dst, dst_units)
    untouched = sorted(set(range(dst["kv"].shape[1])) - set(dst_units["kv"]))
    assert not dst["kv"][:, untouched].any(), "units outside the reservation were written"


def test_units_the_receiver_already_has_are_not_sent(make_backend):
    sender, receiver, src, dst = pair(make_backend, 5)
    units = {"kv": [3, 4, 5, 9, 10, 11], "conv": [2], "ssm": [2]}
    dst["kv"][:, [3, 4]] = 7  # "already cached" pages, different from the sender's
    desc = receiver.expect("skip", units, 10.0, skip_blocks=2)
    handle = sender.open_send(desc)
    post_all(handle, src, units, chunks=3)
    handle.finish(5)
    result = receiver.wait("skip", 10.0)
    assert result.status is TransferStatus.DONE, result.reason
    assert (dst["kv"][:, [3, 4]] == 7).all(), "skipped pages were overwritten"
    assert_units_equal(src, units, dst, units, skip=2)


def test_every_page_already_held_ships_only_the_state(make_backend):
    """The decode worker holds every page of the prompt (skip = all of them): the KV posts are all
    dropped, the manifest names only the state, and the transfer is DONE (it once named the empty
    KV entries and failed as 'manifest names units this transfer did not expect')."""
    sender, receiver, src, dst = pair(make_backend, 8)
    units = {"kv": [3, 4, 5], "conv": [2], "ssm": [2]}
    desc = receiver.expect("held", units, 10.0, skip_blocks=3)
    handle = sender.open_send(desc)
    post_all(handle, src, units, chunks=2)
    handle.finish(9)
    result = receiver.wait("held", 10.0)
    assert result.status is TransferStatus.DONE, result.reason
    assert not dst["kv"].any()
    assert_units_equal(src, {"conv": [2], "ssm": [2]}, dst, {"conv": [2], "ssm": [2]})


def test_corrupted_byte_is_caught_by_the_manifest(make_backend):
    sender, receiver, src, dst = pair(make_backend, 6, corrupt=("kv", 1))
    units = {"kv": [0, 1, 2, 7], "conv": [1], "ssm": [1]}
    handle = sender.open_send(receiver.expect("bad", units, 10.0))
    post_all(handle, src, units, chunks=2)
    handle.finish(1)
    result = receiver.wait("bad", 10.0)
    assert result.status is TransferStatus.FAILED
    assert result.reason == "checksum mismatch region=kv layer=1"
    receiver.forget("bad")
    with pytest.raises(UnknownTransfer):
        receiver.status("bad")


def test_missing_region_fails_as_incomplete(make_backend):
    sender, receiver, src, dst = pair(make_backend, 7)
    units = {"kv": [0, 1], "conv": [1], "ssm": [1]}
    handle = sender.open_send(receiver.expect("partial", units, 10.0))
    post_all(handle, src, {"kv": units["kv"], "conv": units["conv"]}, chunks=1)
    handle.finish(1)
    result = receiver.wait("partial", 10.0)
    assert result.status is TransferStatus.FAILED and "incomplete region=ssm" in result.reason


def test_deadline_expiry_with_no_sender_fails(make_backend):
    receiver = make_backend()
    receiver.register(zeros_like_regions(make_regions(8)))
    receiver.expect("lonely", {"kv": [0], "conv": [0], "ssm": [0]}, deadline_s=0.3)
    start = time.monotonic()
    result = receiver.wait("lonely", timeout_s=10.0)
    assert result.status is TransferStatus.FAILED and "deadline expired" in result.reason
    assert time.monotonic() - start < 1.5


def test_sender_abort_is_reported(make_backend):
    sender, receiver, src, _ = pair(make_backend, 9)
    handle = sender.open_send(receiver.expect("ab", {"kv": [0], "conv": [0], "ssm": [0]}, 10.0))
    handle.post("kv", 0, [3])
    handle.abort("prefill cancelled")
    result = receiver.wait("ab", 10.0)
    assert result.status is TransferStatus.FAILED and result.reason == "sender aborted: prefill cancelled"


def test_two_concurrent_transfers_do_not_mix(make_backend):
    src_a, src_b = make_regions(10), make_regions(11)
    src_b = {k: v.to(src_a[k].dtype) for k, v in src_b.items()}
    dst = zeros_like_regions(src_a)
    sender_a, sender_b, receiver = make_backend(), make_backend(), make_backend()
    sender_a.register(src_a)
    sender_b.register(src_b)
    receiver.register(dst)
    units_a = {"kv": [0, 2, 4, 6, 8, 10], "conv": [0], "ssm": [0]}
    units_b = {"kv": [1, 3, 5, 7, 9, 11], "conv": [1], "ssm": [1]}
    src_units = {"kv": [12, 13, 14, 15, 16, 17], "conv": [3], "ssm": [3]}
    handles = {
        "a": sender_a.open_send(receiver.expect("a", units_a, 10.0)),
        "b": sender_b.open_send(receiver.expect("b", units_b, 10.0)),
    }

    def run(name, regions):
        post_all(handles[name], regions, src_units, chunks=6)
        handles[name].finish(ord(name))

    threads = [threading.Thread(target=run, args=(n, r)) for n, r in (("a", src_a), ("b", src_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for name, regions, units in (("a", src_a, units_a), ("b", src_b, units_b)):
        result = receiver.wait(name, 10.0)
        assert result.status is TransferStatus.DONE and result.first_token == ord(name), result.reason
        assert_units_equal(regions, src_units, dst, units)


def test_read_pulls_exposed_units(make_backend):
    holder, reader, src, dst = pair(make_backend, 12)
    exposed = {"kv": [5, 6, 7, 20], "conv": [4], "ssm": [4]}
    local = {"kv": [0, 1, 9, 3], "conv": [0], "ssm": [0]}
    desc = holder.expose("ckpt", exposed, deadline_s=10.0)
    result = reader.read(desc, local)
    assert result.status is TransferStatus.DONE, result.reason
    assert_units_equal(src, exposed, dst, local)
    holder.forget("ckpt")
    failed = reader.read(desc, local)
    assert failed.status is TransferStatus.FAILED and failed.reason


def test_bad_input_gives_clear_errors(make_backend):
    sender, receiver, src, _ = pair(make_backend, 13)
    with pytest.raises(UnknownTransfer, match="unknown transfer id 'nope'"):
        receiver.status("nope")
    with pytest.raises(UnknownTransfer):
        receiver.wait("nope", 0.1)
    with pytest.raises(TransferError, match="out of range"):
        receiver.expect("x", {"kv": [10_000]}, 5.0)
    with pytest.raises(TransferError, match="unknown region"):
        receiver.expect("y", {"weights": [0]}, 5.0)
    desc = receiver.expect("z", {"kv": [0, 1]}, 5.0)
    with pytest.raises(TransferError, match="already expected"):
        receiver.expect("z", {"kv": [0]}, 5.0)
    handle = sender.open_send(desc)
    with pytest.raises(TransferError, match="descriptor has no region"):
        handle.post("ssm", 0, [0])
    with pytest.raises(TransferError, match="3 units posted"):
        handle.post("kv", 0, [0, 1, 2])
    handle.abort("test over")
    other = make_backend()
    other.register({k: v.to(torch.float64) for k, v in src.items()})
    with pytest.raises(TransferError, match="layout mismatch"):
        other.open_send(receiver.expect("w", {"kv": [0]}, 5.0))
