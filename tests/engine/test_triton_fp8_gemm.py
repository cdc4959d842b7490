"""The Triton block-scaled FP8 GEMM against dequantize-then-matmul, under TRITON_INTERPRET=1 (set by
tests/conftest.py; the interpreter handles float8_e4m3fn loads) and on a GPU when there is one."""

from __future__ import annotations

import pytest
import torch

from engine.ops.fp8 import quantize_block_fp8
from engine.ops.triton.fp8_block_gemm import fp8_block_gemm, fp8_block_gemm_reference

pytestmark = [pytest.mark.triton, pytest.mark.timeout(300)]


def operands(m: int, n: int, k: int, block: tuple[int, int], seed: int, device: str = "cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    weight, scale_inv = quantize_block_fp8(torch.randn(n, k, generator=gen) * 0.05, block)
    return x.to(device), weight.to(device), scale_inv.to(device)


@pytest.mark.parametrize(
    ("m", "n", "k", "block"),
    [
        (5, 200, 300, (128, 128)),  # every edge: M < tile, N and K cut short inside a scale block
        (16, 64, 256, (128, 128)),  # exact tiles, two scale columns
        (3, 96, 80, (32, 16)),  # small scale blocks: many scales per tile, block_k shrinks to 16
    ],
)
def test_kernel_matches_dequantize_then_matmul(m: int, n: int, k: int, block: tuple[int, int]) -> None:
    x, weight, scale_inv = operands(m, n, k, block, seed=m + n + k)
    out = fp8_block_gemm(x, weight, scale_inv, block)
    expected = fp8_block_gemm_reference(x, weight, scale_inv, block)
    assert out.shape == (m, n) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_bad_inputs_are_refused() -> None:
    x, weight, scale_inv = operands(2, 64, 128, (128, 128), seed=1)
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        fp8_block_gemm(x, weight.float(), scale_inv, (128, 128))
    with pytest.raises(ValueError, match="scale_inv"):
        fp8_block_gemm(x, weight, scale_inv[:, :0], (128, 128))
    with pytest.raises(ValueError, match="do not multiply"):
        fp8_block_gemm(x[:, :64], weight, scale_inv, (128, 128))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernel_on_gpu(dtype: torch.dtype) -> None:
    x, weight, scale_inv = operands(64, 2048, 2048, (128, 128), seed=3, device="cuda")
    x = x.to(dtype)
    out = fp8_block_gemm(x, weight, scale_inv, (128, 128))
    expected = fp8_block_gemm_reference(x, weight, scale_inv, (128, 128))
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)
