"""How a block-quantized FP8 checkpoint computes: `EngineConfig.fp8_compute`.

- `dequantize`: every FP8 weight becomes a weight in the model's dtype at load (any device).
- `block`: dense linears keep their FP8 weights and block scales and run the Triton W8A8 GEMM
  (`engine/ops/fp8_linear.py`). On a CPU device that needs the Triton interpreter
  (TRITON_INTERPRET=1): the way it is tested without a GPU; without it, `block` is refused.
- `auto`: `block` on a CUDA device with FP8 tensor cores (compute capability >= 8.9: Ada, Hopper,
  Blackwell) when Triton is installed, else `dequantize` (never the interpreter: it is slow).

Before `block` is chosen the two kernels run once on the device against their torch reference
(`kernel_self_check`, once per device). A kernel that fails to compile or computes wrongly there
turns `auto` into `dequantize` with a warning and refuses a forced `block`: never silently wrong.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch

from engine.quant_config import check_fp8_compute

log = logging.getLogger(__name__)
FP8_MIN_CAPABILITY = (8, 9)
SELF_CHECK_TOLERANCE = 2e-2  # max |kernel - reference| / max |reference|; both round to bf16 at most


def resolve_fp8_compute(mode: str, device: str | torch.device) -> str:
    """`auto` | `dequantize` | `block` → what runs on `device`: `dequantize` or `block`.
    A forced `block` that cannot run here is refused with the reason."""
    check_fp8_compute(mode)
    device = torch.device(device)
    if mode == "dequantize" or (mode == "auto" and device.type != "cuda"):
        return "dequantize"
    reason = _block_unavailable(device) or kernel_self_check(str(device))
    if reason is None:
        return "block"
    if mode == "auto":
        if device.type == "cuda" and _block_unavailable(device) is None:
            log.warning("fp8_compute auto: %s; FP8 weights are dequantized at load instead", reason)
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


@functools.cache
def kernel_self_check(device: str) -> str | None:
    """Run the activation quantization and the W8A8 GEMM once on `device` against their torch
    reference: None when they agree, else what went wrong."""
    from engine.ops.fp8 import FP8_DTYPE  # lazy: the kernels import Triton, only when FP8 runs
    from engine.ops.fp8_linear import Fp8BlockLinear  # lazy: as above

    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(256, 256, generator=gen) * 8).to(FP8_DTYPE)
    scale_inv = torch.rand(2, 2, generator=gen) / 64 + 1 / 256
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    x = torch.randn(8, 256, generator=gen).to(device=device, dtype=dtype)
    linear = Fp8BlockLinear(weight.to(device), scale_inv.to(device), (128, 128))
    try:
        got, want = linear.forward(x).float(), linear.reference(x).float()
    except Exception as error:  # noqa: BLE001 - any failure of the kernels is the answer
        return f"the Triton FP8 GEMM failed to run on {device} ({type(error).__name__}: {error})"
    error = ((got - want).abs().max() / want.abs().max()).item()
    if not error <= SELF_CHECK_TOLERANCE:  # NaN fails too
        return f"the Triton FP8 GEMM differs from its torch reference on {device} by {error:.3g} (relative)"
    return None
