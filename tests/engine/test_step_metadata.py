"""`MetadataUploader` (engine/models/step_metadata.py): the step's integer arrays packed into one
buffer and copied once come out equal, whatever their dtypes, shapes (empty ones too) and sizes;
the buffer grows when a step needs more. Runs the packing path on the CPU (`pack_on_cpu`)."""

from __future__ import annotations

import pytest
import torch

from engine.models.step_metadata import MetadataUploader


def arrays(seed: int, scale: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(-(2**40), 2**40, (3 * scale,), generator=g),  # int64, odd length
        torch.randint(0, 2**30, (5, 7 * scale), generator=g, dtype=torch.int32),  # int32, 2-D
        torch.zeros(0, dtype=torch.long),  # empty
        torch.zeros((0, 4), dtype=torch.int32),  # empty 2-D
        torch.randint(0, 100, (1,), generator=g, dtype=torch.int32),  # one int32 then int64: alignment
        torch.randint(0, 100, (2, 3), generator=g),
    ]


def test_packed_upload_returns_equal_views_of_one_buffer() -> None:
    uploader = MetadataUploader("cpu", initial_bytes=64, pack_on_cpu=True)
    for step, scale in enumerate((1, 50, 2)):  # the second step outgrows the buffer
        host = arrays(step, scale)
        device = uploader.upload(host)
        for h, d in zip(host, device, strict=True):
            assert d.dtype == h.dtype and d.shape == h.shape
            assert torch.equal(d, h)
            assert d.data_ptr() != h.data_ptr() or h.numel() == 0  # a copy, not the host array
        buffers = {d.untyped_storage().data_ptr() for d in device}
        assert len(buffers) == 1  # one buffer: one copy
    assert uploader.num_uploads == 3


def test_on_the_cpu_nothing_is_copied() -> None:
    host = arrays(0, 1)
    assert all(d is h for d, h in zip(MetadataUploader("cpu").upload(host), host, strict=True))


def test_float_metadata_is_refused() -> None:
    with pytest.raises(ValueError, match="integer"):
        MetadataUploader("cpu", pack_on_cpu=True).upload([torch.zeros(3)])
