"""`Fp8BlockLinear`: a linear layer that keeps a block-quantized FP8 weight and multiplies on FP8
tensor cores (`fp8_compute` block, see `engine/ops/fp8_compute.py`).

Holds the float8_e4m3fn weight `[N, K]` and its fp32 `weight_scale_inv` `[ceil(N / bn), ceil(K / bk)]`.
`forward` quantizes the activations per token and 1 x bk group (dynamic, like DeepSeek-V3 / vLLM;
`engine/ops/triton/fp8_act_quant.py`) and runs the Triton W8A8 GEMM
(`engine/ops/triton/fp8_w8a8_gemm.py`); `reference` computes the same thing in torch
(`quantize_activation_fp8`, then dequantize-and-matmul in fp32), the naive form both kernels are
tested against.

Fused projections (q|k|v, gate|up, the DeltaNet in_proj) concatenate their parts' rows:
`from_row_scales` takes one scale row per weight row (`expand_scale_rows`), which any row split,
tensor-parallel shard or concatenation keeps exact, and folds it back to `bn`-row blocks when every
block of rows shares one scale (always for real checkpoints, whose parts are multiples of 128 rows).
"""

from __future__ import annotations

import torch

from engine.ops.fp8 import FP8_DTYPE, quantize_activation_fp8, scale_shape
from engine.ops.triton.fp8_act_quant import quantize_activation_fp8_triton
from engine.ops.triton.fp8_w8a8_gemm import fp8_w8a8_gemm, fp8_w8a8_gemm_reference


class Fp8BlockLinear:
    def __init__(
        self,
        weight: torch.Tensor,
        scale_inv: torch.Tensor,
        block: tuple[int, int],
        bias: torch.Tensor | None = None,
    ) -> None:
        if weight.dtype != FP8_DTYPE or weight.dim() != 2:
            raise ValueError(
                f"Fp8BlockLinear needs a 2-d float8_e4m3fn weight, got {weight.dtype} {tuple(weight.shape)}"
            )
        if tuple(scale_inv.shape) != scale_shape(tuple(weight.shape), block):
            raise ValueError(
                f"scale_inv {tuple(scale_inv.shape)} does not match weight {tuple(weight.shape)} in {block} blocks"
            )
        self.weight = weight.contiguous()
        self.scale_inv = scale_inv.to(torch.float32).contiguous()
        self.block = block
        self.bias = bias
        self.use_kernel = True  # False: `__call__` runs `reference` (tests hold a model to it)

    @classmethod
    def from_row_scales(
        cls,
        weight: torch.Tensor,
        row_scales: torch.Tensor,
        block: tuple[int, int],
        bias: torch.Tensor | None = None,
    ) -> Fp8BlockLinear:
        """`row_scales [N, ceil(K / bk)]`: one scale row per weight row. Folded to `block[0]`-row
        blocks when that is exact (fewer scales to read), else kept as `(1, bk)` blocks."""
        n, bn = weight.shape[0], block[0]
        if n % bn == 0:
            grouped = row_scales.view(n // bn, bn, -1)
            if torch.equal(grouped, grouped[:, :1].expand_as(grouped)):
                return cls(weight, grouped[:, 0], block, bias)
        return cls(weight, row_scales, (1, block[1]), bias)

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [..., K]` → `[..., N]` in x's dtype: the Triton activation quantization, then the
        Triton W8A8 GEMM (two launches)."""
        a, a_scale = quantize_activation_fp8_triton(x.reshape(-1, x.shape[-1]), self.block[1])
        y = fp8_w8a8_gemm(a, a_scale, self.weight, self.scale_inv, self.block, x.dtype)
        return self._finish(y, x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x) if self.use_kernel else self.reference(x)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` in torch: the same activation quantization, then dequantize-and-matmul in fp32."""
        a, a_scale = quantize_activation_fp8(x.reshape(-1, x.shape[-1]), self.block[1])
        y = fp8_w8a8_gemm_reference(a, a_scale, self.weight, self.scale_inv, self.block, x.dtype)
        return self._finish(y, x)

    def _finish(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], y.shape[-1])
