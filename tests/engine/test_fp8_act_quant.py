"""The Triton per-token-group FP8 activation quantization against its torch reference
(`engine.ops.fp8.quantize_activation_fp8`): bitwise, under TRITON_INTERPRET=1 (tests/conftest.py) and
on a GPU, including every e4m3 rounding midpoint, ties, subnormals, -0.0 and groups cut short."""

from __future__ import annotations

import pytest
import torch

from engine.ops.fp8 import FP8_DTYPE, FP8_MAX, quantize_activation_fp8
from engine.ops.triton.fp8_act_quant import quantize_activation_fp8_triton

pytestmark = [pytest.mark.triton, pytest.mark.timeout(300)]


def e4m3_edges() -> torch.Tensor:
    """Every positive e4m3 value, the midpoints between neighbours (ties) and values just either
    side of each midpoint, both signs, plus zeros: with 448 in the group the scale is exactly 1."""
    values = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).float()
    positive = values[(values > 0) & values.isfinite()].unique()
    mid = (positive[1:] + positive[:-1]) / 2
    near = torch.cat([positive, mid, torch.nextafter(mid, mid + 1), torch.nextafter(mid, mid - 1)])
    return torch.cat([torch.tensor([FP8_MAX, 0.0, -0.0]), near, -near])


def assert_bitwise(x: torch.Tensor, group: int) -> None:
    q, scale = quantize_activation_fp8_triton(x, group)
    q_ref, scale_ref = quantize_activation_fp8(x, group)
    assert torch.equal(scale, scale_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


def test_every_e4m3_rounding_edge_rounds_like_torch():
    edges = e4m3_edges()
    group = 128
    rows = -(-edges.numel() // (group - 1))
    x = torch.zeros(rows, group)
    x[:, 0] = FP8_MAX  # scale 1: the group's values are quantized as they are
    flat = torch.cat([edges, torch.zeros(rows * (group - 1) - edges.numel())])
    x[:, 1:] = flat.view(rows, group - 1)
    assert_bitwise(x, group)


@pytest.mark.parametrize(
    ("m", "k", "group", "dtype"),
    [
        (5, 200, 128, torch.float32),
        (3, 64, 128, torch.bfloat16),
        (2, 80, 16, torch.float32),
        (0, 64, 128, torch.float32),
    ],
)
def test_random_rows_equal_the_reference(m, k, group, dtype):
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(k)) * 3).to(dtype)
    if m:
        x[0, :group] = 0  # an all-zero group
    assert_bitwise(x, group)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_gpu():
    edges = e4m3_edges()
    x = torch.zeros(-(-edges.numel() // 127), 128)
    x[:, 0] = FP8_MAX
    x[:, 1:] = torch.cat([edges, torch.zeros(x.shape[0] * 127 - edges.numel())]).view(-1, 127)
    for rows in (x, torch.randn(300, 2048) * 5):
        q, scale = quantize_activation_fp8_triton(rows.cuda(), 128)
        q_ref, scale_ref = quantize_activation_fp8(rows, 128)
        assert torch.equal(scale.cpu(), scale_ref)
        assert torch.equal(q.cpu().view(torch.uint8), q_ref.view(torch.uint8))
