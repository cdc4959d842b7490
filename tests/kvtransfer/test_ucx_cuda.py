"""When the ucx backend hands device memory to UCX as it is, and when it stages."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from kvtransfer import ucx
from kvtransfer.base import TransferStatus
from kvtransfer.book import ReceiveBook
from kvtransfer.device_checksum import dev64
from kvtransfer.regions import RegionSet
from tests.kvtransfer.conftest import ucx_unavailable_reason
from tests.kvtransfer.helpers import assert_units_equal, make_regions, post_all, zeros_like_regions


@pytest.mark.parametrize(
    ("tls", "allowed"),
    [
        (None, True),
        ("all", True),
        ("rc,cuda_copy,cuda_ipc,self", True),
        ("rc,cuda,self", True),
        ("tcp,self", False),
        ("sysv,posix,cma", False),
        ("^cuda_ipc", True),
        ("^cuda_copy,cuda_ipc", False),
        ("^tcp", True),
    ],
)
def test_ucx_tls_decides_whether_cuda_memory_goes_direct(tls, allowed):
    assert ucx.tls_allows_cuda(tls) is allowed


@pytest.mark.skipif(importlib.util.find_spec("libucx") is None, reason="ucxx-cu12 not installed")
def test_the_bundled_ucx_ships_cuda_transports():
    assert ucx._has_cuda_module()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_without_a_gpu_nothing_goes_direct(monkeypatch):
    monkeypatch.delenv("UCX_TLS", raising=False)
    assert not ucx.cuda_direct()


@pytest.mark.ucx
@pytest.mark.timeout(60)
def test_staged_device_payloads_arrive_identical_and_checked(monkeypatch):
    """Host tensors stand in for device memory that UCX cannot read (no CUDA transports)."""
    if reason := ucx_unavailable_reason():
        pytest.skip(reason)
    monkeypatch.setattr(RegionSet, "on_device", lambda self, region: True)
    monkeypatch.setattr(ucx, "_on_device", lambda view: True)
    manifests = []
    complete = ReceiveBook.complete
    monkeypatch.setattr(
        ReceiveBook, "complete", lambda self, t, m: complete(self, t, manifests.append(m) or m)
    )
    src = make_regions(7)
    dst = zeros_like_regions(src)
    sender, receiver = ucx.UcxBackend(), ucx.UcxBackend()
    try:
        assert not sender.direct
        sender.register(src)
        receiver.register(dst)
        units = {"kv": [0, 1, 2, 9], "conv": [1], "ssm": [3]}
        handle = sender.open_send(receiver.expect("u", units, 20.0))
        post_all(handle, src, units, chunks=2)
        handle.finish(3)
        result = receiver.wait("u", 20.0)
        assert result.status is TransferStatus.DONE, result.reason
        assert_units_equal(src, units, dst, units)
        for entry in manifests[0].entries:  # computed where the bytes are (dev64), both sides
            assert entry.algo == "dev64"
            assert entry.checksum == dev64(sender.regions, entry.region, entry.layer, units[entry.region])
    finally:
        sender.close()
        receiver.close()
