"""Block-quantized FP8 weights (the layout of Qwen's / DeepSeek's `-FP8` checkpoints), torch reference.

A weight `[..., N, K]` is stored as float8_e4m3fn with an fp32 `weight_scale_inv`
`[..., ceil(N / bn), ceil(K / bk)]`: element (n, k) is `fp8[n, k] * scale_inv[n // bn, k // bk]`.
Edge blocks that are cut short by N or K share their block's scale (as transformers' and vLLM's
loaders read them). Leading dims (stacked experts) carry their own scales.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max


def scale_shape(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, ...]:
    n, k = shape[-2:]
    return (*shape[:-2], -(-n // block[0]), -(-k // block[1]))


def expand_scales(scale_inv: torch.Tensor, n: int, k: int, block: tuple[int, int]) -> torch.Tensor:
    """Per-block scales → one scale per element `[..., n, k]`."""
    per_row = scale_inv.repeat_interleave(block[0], dim=-2)[..., :n, :]
    return per_row.repeat_interleave(block[1], dim=-1)[..., :k]


def dequantize_block_fp8(
    weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """fp8 weight + block scales → `dtype` weight, computed in fp32 one row of blocks at a time, so
    a load holds the fp8 tensor, its `dtype` result and only one `[bn, K]` fp32 slice besides."""
    n, k = weight.shape[-2:]
    expected = scale_shape(tuple(weight.shape), block)
    if tuple(scale_inv.shape) != expected:
        raise ValueError(
            f"weight_scale_inv has shape {tuple(scale_inv.shape)}; a {tuple(weight.shape)} weight in "
            f"{block[0]}x{block[1]} blocks needs {expected}"
        )
    out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    flat_w, flat_out = weight.reshape(-1, n, k), out.view(-1, n, k)
    flat_s = scale_inv.to(torch.float32).reshape(-1, *expected[-2:])
    bn, bk = block
    for lead in range(flat_w.shape[0]):
        for i in range(expected[-2]):
            rows = slice(i * bn, min((i + 1) * bn, n))
            scales = flat_s[lead, i].repeat_interleave(bk)[:k]
            flat_out[lead, rows] = flat_w[lead, rows].to(torch.float32) * scales
    return out


def quantize_block_fp8(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`[..., N, K]` weight → (float8_e4m3fn weight, fp32 scale_inv), each block scaled so that its
    largest magnitude maps to the fp8 maximum (448)."""
    w = weight.to(torch.float32)
    n, k = w.shape[-2:]
    bn, bk = block
    pad_n, pad_k = -n % bn, -k % bk
    padded = torch.nn.functional.pad(w, (0, pad_k, 0, pad_n))
    blocks = padded.reshape(*w.shape[:-2], (n + pad_n) // bn, bn, (k + pad_k) // bk, bk)
    amax = blocks.abs().amax(dim=(-3, -1))
    scale_inv = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    quantized = (w / expand_scales(scale_inv, n, k, block)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return quantized, scale_inv


def quantize_activation_fp8(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token-group dynamic quantization (DeepSeek-V3's / vLLM's `activation_scheme: dynamic`):
    `x [M, K]` → (float8_e4m3fn `[M, K]`, fp32 scales `[M, ceil(K / group)]`), each 1 x `group`
    slice of a row scaled so that its largest magnitude maps to 448; x ≈ fp8 * scale. The last
    group of a row may be cut short by K. No host sync (graph-safe)."""
    m, k = x.shape
    groups = -(-k // group)
    padded = torch.nn.functional.pad(x.to(torch.float32), (0, groups * group - k))
    amax = padded.view(m, groups, group).abs().amax(dim=-1)
    scale = torch.clamp(amax, min=1e-12) / FP8_MAX
    per_elem = scale.repeat_interleave(group, dim=-1)[:, :k]
    return (x.to(torch.float32) / per_elem).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def expand_scale_rows(scale_inv: torch.Tensor, n: int, block_n: int) -> torch.Tensor:
    """Block scales `[ceil(N / bn), Kb]` → one scale row per weight row `[N, Kb]`: the same weight
    in `(1, bk)` blocks, which any row split, shard or concatenation keeps consistent."""
    return scale_inv.repeat_interleave(block_n, dim=-2)[..., :n, :].contiguous()
