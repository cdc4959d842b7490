"""`quantization_config` of a Hugging Face config.json → `QuantConfig` (torch-free). Baton loads
block-quantized FP8 (Qwen's / DeepSeek's `-FP8` releases) and refuses every other method by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# `EngineConfig.fp8_compute`: how an FP8 checkpoint computes (engine/ops/fp8_compute.py).
FP8_COMPUTE_MODES = ("auto", "dequantize", "block")


def check_fp8_compute(mode: str) -> None:
    if mode not in FP8_COMPUTE_MODES:
        raise ValueError(f"fp8_compute must be one of {FP8_COMPUTE_MODES}, got {mode!r}")


class ConfigError(ValueError):
    """A config.json Baton cannot serve: a missing or bad field, or a feature it does not implement."""


@dataclass(frozen=True, slots=True)
class QuantConfig:
    """Block-quantized FP8 (`quant_method: fp8`): float8_e4m3fn weights with one fp32
    `weight_scale_inv` per `weight_block_size` block ([out, in]); w = fp8 * scale_inv."""

    method: str
    weight_block_size: tuple[int, int]
    activation_scheme: str
    modules_to_not_convert: tuple[str, ...]


def parse_quantization(quant: dict[str, Any] | None) -> QuantConfig | None:
    if quant is None:
        return None
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    if method != "fp8":
        raise ConfigError(
            f"quantization_config with quant_method {method!r} is not supported; Baton loads "
            "block-quantized fp8 (quant_method 'fp8' with weight_block_size) or unquantized weights"
        )
    block = quant.get("weight_block_size")
    if not (
        isinstance(block, list | tuple)
        and len(block) == 2
        and all(isinstance(b, int) and b > 0 for b in block)
    ):
        raise ConfigError(
            f"quantization_config fp8 without a [rows, cols] weight_block_size ({block!r}): "
            "per-tensor fp8 is not supported"
        )
    scheme = quant.get("activation_scheme", "dynamic")
    if scheme != "dynamic":
        raise ConfigError(
            f"quantization_config fp8 activation_scheme {scheme!r} is not supported (only 'dynamic')"
        )
    fmt = quant.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise ConfigError(f"quantization_config fp8 fmt {fmt!r} is not supported (only 'e4m3')")
    skip = quant.get("modules_to_not_convert") or quant.get("ignored_layers") or ()
    return QuantConfig("fp8", (block[0], block[1]), scheme, tuple(skip))
