"""How the kernels' `tl.dot`s read their operands, decided once per launch from dtype and mode.

- fp32 operands use `input_precision="ieee"`: exact fp32, so fp32 tests against torch mean something
  (the default would round through tf32 on the GPU).
- Under TRITON_INTERPRET=1 (Triton 3.9, CPU), `tl.dot` of bf16/fp16 operands returns garbage
  (~1e10 errors on a 16x16 product), so the interpreter upcasts the operands to fp32 first. On a GPU
  the operands stay in the storage dtype and run on tensor cores with fp32 accumulation.
"""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dot_upcast(dtype: torch.dtype) -> bool:
    """True when the kernel should cast its dot operands to fp32 before `tl.dot`."""
    return dtype == torch.float32 or interpreting()


def dot_precision(dtype: torch.dtype) -> str:
    """`input_precision` for dots whose operands come from tensors of `dtype`."""
    return "ieee" if dot_upcast(dtype) else "tf32"
