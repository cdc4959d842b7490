"""Regions in GPU memory, on a GPU: every backend delivers identical bytes from device to device
(tcp through its pinned ring with checksums on the staged bytes, local device to device, ucx
direct or staged) and the manifest check passes."""

from __future__ import annotations

import random

import pytest
import torch

from kvtransfer.base import TransferStatus
from tests.kvtransfer.helpers import assert_units_equal, make_regions, post_all, random_units

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
]


def on_cuda(regions: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.to("cuda") for name, t in regions.items()}


@pytest.mark.parametrize("seed", [0, 1])
def test_device_regions_arrive_identical(make_backend, seed):
    src = on_cuda(make_regions(seed))
    dst = {name: torch.zeros_like(t) for name, t in src.items()}
    sender, receiver = make_backend(), make_backend()
    sender.register(src)
    receiver.register(dst)
    rng = random.Random(seed)
    src_units, dst_units = random_units(rng, src, 10), random_units(rng, src, 10)
    handle = sender.open_send(receiver.expect(f"g{seed}", dst_units, 30.0))
    post_all(handle, src, src_units, chunks=2)
    handle.finish(first_token=5)
    result = receiver.wait(f"g{seed}", 30.0)
    assert result.status is TransferStatus.DONE, result.reason
    torch.cuda.synchronize()
    assert_units_equal(src, src_units, dst, dst_units)
