"""Which form of an op runs: the Triton kernels on CUDA tensors, the torch forms elsewhere.

`FORCE_TRITON` (env `BATON_FORCE_TRITON=1`, or set by a test) routes CPU tensors to the Triton
kernels too, which then run under TRITON_INTERPRET=1: the way the model's GPU wiring is tested on
a machine without a GPU.
"""

from __future__ import annotations

import os

import torch

FORCE_TRITON = os.environ.get("BATON_FORCE_TRITON", "0") == "1"


def use_triton(tensor_or_device: torch.Tensor | torch.device | str) -> bool:
    if isinstance(tensor_or_device, torch.Tensor):
        device = tensor_or_device.device
    else:
        device = torch.device(tensor_or_device)
    return device.type == "cuda" or FORCE_TRITON
