"""How a block-quantized FP8 checkpoint computes: `EngineConfig.fp8_compute`.

- `dequantize`: every FP8 weight becomes a weight in the model's dtype at load (any device).
- `block`: dense linears keep their FP8 weights and block scales and run the Triton W8A8 GEMM
  (`engine/ops/fp8_linear.py`). On a CPU device that needs the Triton interpreter
  (TRITON_INTERPRET=1): the way it is tested without a GPU; without it, `block` is refused.
- `auto`: `block` on a CUDA device with FP8 tensor cores (compute capability >= 8.9: Ada, Hopper,
  Blackwell) when Triton is installed, else `dequantize` (never the interpreter: it is slow).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from engine.quant_config import check_fp8_compute

FP8_MIN_CAPABILITY = (8, 9)


def resolve_fp8_compute(mode: str, device: str | torch.device) -> str:
    """`auto` | `dequantize` | `block` → what runs on `device`: `dequantize` or `block`.
    A forced `block` that cannot run here is refused with the reason."""
    check_fp8_compute(mode)
    device = torch.device(device)
    if mode == "dequantize" or (mode == "auto" and device.type != "cuda"):
        return "dequantize"
    reason = _block_unavailable(device)
    if reason is None:
        return "block"
    if mode == "auto":
        return "dequantize"
    raise ValueError(f"fp8_compute 'block' cannot run here: {reason}; use 'auto' or 'dequantize'")


def _block_unavailable(device: torch.device) -> str | None:
    """Why the Triton FP8 GEMM cannot run on `device`, or None when it can."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        capability = torch.cuda.get_device_capability(device)
        if capability < FP8_MIN_CAPABILITY:
            return (
                f"the GPU's compute capability {capability} has no FP8 tensor cores "
                f"(needs >= {FP8_MIN_CAPABILITY})"
            )
        return None
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return None
        return "on a CPU device the Triton kernel runs only under the interpreter (TRITON_INTERPRET=1)"
    return f"device type {device.type!r} has no Triton FP8 kernel"
