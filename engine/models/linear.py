"""The model's linear layers, built from canonical `[out, in]` weights: a plain tensor kept as
`[in, out]` (`x @ w`, ~3x faster than `F.linear` at decode), or an `Fp8BlockLinear` when the loader
kept the weight in FP8 (a `<name>_scale_inv` of one scale row per weight row sits beside it, see
`engine/loader.py`). A fused projection whose parts are partly FP8 (the DeltaNet in_proj: q|k|v and
z in FP8, the small b and a left unquantized, as in Qwen's releases) is a `ConcatLinear`."""

from __future__ import annotations

import torch

from engine.model_config import ModelConfig
from engine.ops.fp8_linear import Fp8BlockLinear

SCALE_SUFFIX = "_scale_inv"


class ConcatLinear:
    """Several linears over the same input; outputs concatenated in order."""

    def __init__(self, parts: list[torch.Tensor | Fp8BlockLinear]) -> None:
        self.parts = parts

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([apply_linear(x, p) for p in self.parts], dim=-1)


Linear = torch.Tensor | Fp8BlockLinear | ConcatLinear


def fp8_block(cfg: ModelConfig) -> tuple[int, int] | None:
    return None if cfg.quantization is None else cfg.quantization.weight_block_size


def build_linear(
    weights: dict[str, torch.Tensor],
    names: list[str],
    block: tuple[int, int] | None,
    bias: torch.Tensor | None = None,
) -> Linear:
    """The rows of `weights[name]` for `names`, in order, as one linear (`bias` on the whole)."""
    fp8 = [n + SCALE_SUFFIX in weights for n in names]
    if not any(fp8):
        return torch.cat([weights[n] for n in names]).t().contiguous()
    if block is None:
        raise ValueError(f"{names}: FP8 weights without a quantization block size")
    if all(fp8):
        weight = torch.cat([weights[n] for n in names])
        scales = torch.cat([weights[n + SCALE_SUFFIX] for n in names])
        return Fp8BlockLinear.from_row_scales(weight, scales, block, bias)
    if bias is not None:
        raise ValueError(f"{names}: a bias over partly FP8 projections is not supported")
    runs: list[list[str]] = []  # consecutive names of the same kind
    for name, is_fp8 in zip(names, fp8, strict=True):
        if runs and (runs[-1][0] + SCALE_SUFFIX in weights) == is_fp8:
            runs[-1].append(name)
        else:
            runs.append([name])
    return ConcatLinear([build_linear(weights, run, block) for run in runs])


def apply_linear(x: torch.Tensor, linear: Linear, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x @ w (+ bias)` for a plain `[in, out]` tensor; the layer's own call otherwise (an FP8
    linear carries its bias)."""
    if isinstance(linear, torch.Tensor):
        return x @ linear if bias is None else torch.addmm(bias, x, linear)
    return linear(x)


def fp8_linears(model) -> dict[str, Fp8BlockLinear]:
    """Every `Fp8BlockLinear` of a `HybridModel`'s decoder layers, by `layers.{i}.{part}.{attr}.{j}`
    (j: the part of a `ConcatLinear`). For logs, benchmarks and tests (which switch them to their
    torch reference)."""
    out = {}
    for layer in model.layers:
        for path in ("mixer", "ffn", "ffn.shared"):
            owner = layer
            for attr in path.split("."):
                owner = getattr(owner, attr, None)
            for name, value in vars(owner).items() if owner is not None else ():
                parts = value.parts if isinstance(value, ConcatLinear) else [value]
                for i, part in enumerate(parts):
                    if isinstance(part, Fp8BlockLinear):
                        out[f"layers.{layer.layer_id}.{path}.{name}.{i}"] = part
    return out
