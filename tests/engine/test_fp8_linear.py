"""The FP8 x FP8 block-scaled GEMM and `Fp8BlockLinear`, under TRITON_INTERPRET=1 (set by
tests/conftest.py; the interpreter runs float8_e4m3fn loads and fp8 x fp8 `tl.dot`) and on a GPU when
there is one. The kernel is held to its grouped torch reference (tight) and to plain
dequantize-then-matmul of the same quantized operands; the linear's activation quantization to its
own reference, and to the unquantized matmul at the error e4m3 implies."""

from __future__ import annotations

import pytest
import torch

from engine.ops.fp8 import (
    FP8_MAX,
    dequantize_block_fp8,
    expand_scale_rows,
    quantize_activation_fp8,
    quantize_block_fp8,
)
from engine.ops.fp8_linear import Fp8BlockLinear
from engine.ops.triton.fp8_w8a8_gemm import fp8_w8a8_gemm, fp8_w8a8_gemm_reference

pytestmark = [pytest.mark.triton, pytest.mark.timeout(300)]


def operands(m: int, n: int, k: int, block: tuple[int, int], seed: int, device: str = "cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to(device)
    weight, scale_inv = quantize_block_fp8(torch.randn(n, k, generator=gen) * 0.05, block)
    return x, weight.to(device), scale_inv.to(device)


def dequantized_activation(a: torch.Tensor, a_scale: torch.Tensor, group: int) -> torch.Tensor:
    return a.float() * a_scale.repeat_interleave(group, dim=1)[:, : a.shape[1]]


def test_activation_quantization_is_per_token_group_and_round_trips():
    x = torch.randn(3, 200) * torch.tensor([[1.0], [100.0], [1e-3]])  # rows of very different scale
    x[1, 130:] = 0  # a group that is all zeros except a few
    a, scale = quantize_activation_fp8(x, 128)
    assert a.dtype == torch.float8_e4m3fn and scale.shape == (3, 2)
    # Each group's largest magnitude maps to the fp8 maximum.
    assert torch.equal(a.float()[:, :128].abs().amax(dim=1), torch.full((3,), FP8_MAX))
    back = dequantized_activation(a, scale, 128)
    assert ((back - x).abs() <= 2**-4 * x.abs() + 1e-30).all()  # e4m3: 3 mantissa bits, half-ulp 2^-4


@pytest.mark.parametrize(
    ("m", "n", "k", "block"),
    [
        (5, 200, 300, (128, 128)),  # every edge: M < tile, N and K cut short inside a scale block
        (17, 256, 256, (128, 128)),  # exact scale blocks, two K groups, M over one thin tile
        (3, 96, 80, (32, 16)),  # small blocks: block_k shrinks to 16, many scale rows per tile
        (4, 70, 64, (1, 128)),  # one scale row per weight row (fused / sharded projections)
    ],
)
def test_kernel_equals_its_reference_and_dequantize_then_matmul(m, n, k, block):
    x, weight, scale_inv = operands(m, n, k, block, seed=m + n + k)
    if block[0] == 1:
        scale_inv = scale_inv * torch.linspace(0.5, 2.0, n)[:, None]  # rows differ within a block
    a, a_scale = quantize_activation_fp8(x, block[1])
    out = fp8_w8a8_gemm(a, a_scale, weight, scale_inv, block, torch.float32)
    assert out.shape == (m, n) and out.dtype == torch.float32
    # Same grouping and order as the kernel; products of e4m3 values are exact in fp32.
    torch.testing.assert_close(
        out,
        fp8_w8a8_gemm_reference(a, a_scale, weight, scale_inv, block, torch.float32),
        atol=1e-6,
        rtol=1e-6,
    )
    plain = dequantized_activation(a, a_scale, block[1]) @ dequantize_block_fp8(weight, scale_inv, block).t()
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)  # fp32 sums in another order


def test_bad_operands_are_refused():
    x, weight, scale_inv = operands(2, 64, 128, (128, 128), seed=1)
    a, a_scale = quantize_activation_fp8(x, 128)
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        fp8_w8a8_gemm(x, a_scale, weight, scale_inv, (128, 128), torch.float32)
    with pytest.raises(ValueError, match="w_scale"):
        fp8_w8a8_gemm(a, a_scale, weight, scale_inv[:, :0], (128, 128), torch.float32)
    with pytest.raises(ValueError, match="a_scale"):
        fp8_w8a8_gemm(a, a_scale[:1], weight, scale_inv, (128, 128), torch.float32)
    with pytest.raises(ValueError, match="do not multiply"):
        fp8_w8a8_gemm(a[:, :64], a_scale, weight, scale_inv, (128, 128), torch.float32)
    with pytest.raises(ValueError, match="scale_inv"):
        Fp8BlockLinear(weight, scale_inv[:1, :1].expand(3, 3), (128, 128))


def test_linear_forward_equals_reference_and_is_near_the_unquantized_matmul():
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(96, 160, generator=gen) * 0.05
    weight, scale_inv = quantize_block_fp8(w, (128, 128))
    bias = torch.randn(96, generator=gen)
    linear = Fp8BlockLinear(weight, scale_inv, (128, 128), bias)
    x = torch.randn(2, 3, 160, generator=gen)  # leading dims are kept
    out = linear(x)
    assert out.shape == (2, 3, 96)
    torch.testing.assert_close(out, linear.reference(x), atol=1e-6, rtol=1e-6)
    exact = x @ w.t() + bias
    # Weights and activations each carry e4m3 rounding (relative <= 2^-4 per element, ~2.5% rms
    # after a sum of random terms); 6% of the output's rms bounds their combined effect here.
    assert (out - exact).norm() / exact.norm() < 0.06
    linear.use_kernel = False
    assert torch.equal(linear(x), linear.reference(x))


def test_row_scales_fold_back_to_blocks_only_when_exact():
    w = torch.randn(256, 64) * 0.05
    weight, scale_inv = quantize_block_fp8(w, (128, 128))
    folded = Fp8BlockLinear.from_row_scales(weight, expand_scale_rows(scale_inv, 256, 128), (128, 128))
    assert folded.block == (128, 128) and torch.equal(folded.scale_inv, scale_inv)
    # Two parts of 64 and 192 rows (a k|v-like concatenation): block rows straddle parts.
    parts = [quantize_block_fp8(t, (128, 128)) for t in (w[:64] * 3, w[64:])]
    rows = torch.cat([expand_scale_rows(s, p.shape[0], 128) for p, s in parts])
    mixed = Fp8BlockLinear.from_row_scales(torch.cat([p for p, _ in parts]), rows, (128, 128))
    assert mixed.block == (1, 128) and mixed.scale_inv.shape == (256, 1)
    x = torch.randn(4, 64)
    expected = torch.cat([Fp8BlockLinear(p, s, (128, 128)).reference(x) for p, s in parts], dim=1)
    torch.testing.assert_close(mixed(x), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("m", [1, 16, 200])
def test_kernel_on_gpu(m: int) -> None:
    x, weight, scale_inv = operands(m, 2048, 2048, (128, 128), seed=3, device="cuda")
    linear = Fp8BlockLinear(weight, scale_inv, (128, 128))
    x = x.to(torch.bfloat16)
    out = linear(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), linear.reference(x).float(), atol=2e-2, rtol=2e-2)  # bf16 output
