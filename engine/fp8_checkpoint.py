"""Write a checkpoint's linear weights as block-quantized FP8, the way Qwen's `-FP8` releases are laid
out: float8_e4m3fn `<module>.weight` + fp32 `<module>.weight_scale_inv` per block, and a
`quantization_config` naming the modules left in full precision (`modules_to_not_convert`).

Left unquantized, as in the released FP8 checkpoints: embeddings, lm_head, norms, the DeltaNet conv
and per-head parameters, the MoE router (`mlp.gate`), the shared-expert gate and the small DeltaNet
`in_proj_ba` / `in_proj_b` / `in_proj_a` projections.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.ops.fp8 import quantize_block_fp8

DEFAULT_BLOCK = (128, 128)
_KEEP_SUFFIXES = (
    "mlp.gate.weight",
    "mlp.shared_expert_gate.weight",
    "linear_attn.in_proj_ba.weight",
    "linear_attn.in_proj_b.weight",
    "linear_attn.in_proj_a.weight",
)


def is_quantized_module(name: str, tensor: torch.Tensor) -> bool:
    """A linear weight (`*_proj.weight` [out, in], or fused experts [E, out, in]) that FP8 converts."""
    if name == "lm_head.weight" or name.endswith(_KEEP_SUFFIXES):
        return False
    module = name.removesuffix(".weight").rsplit(".", 1)[-1]  # q_proj, in_proj_qkvz, out_proj, fc ...
    linear = name.endswith(".weight") and "proj" in module and tensor.dim() == 2
    fused_experts = name.endswith(("experts.gate_up_proj", "experts.down_proj")) and tensor.dim() == 3
    return linear or fused_experts or name.endswith("mtp.fc.weight")


def quantize_checkpoint(
    tensors: dict[str, torch.Tensor], block: tuple[int, int] = DEFAULT_BLOCK
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """HF-named tensors → (tensors with fp8 weights + scales, the `quantization_config` dict)."""
    out: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for name, tensor in tensors.items():
        if is_quantized_module(name, tensor):
            weight, scale_inv = quantize_block_fp8(tensor, block)
            # `x.weight` → `x.weight_scale_inv`; fused experts `gate_up_proj` → `gate_up_proj_scale_inv`
            # (transformers' FP8 expert naming).
            out[name], out[name + "_scale_inv"] = weight, scale_inv
        else:
            out[name] = tensor
            if name.endswith(".weight") and tensor.dim() == 2 and "norm" not in name and "embed" not in name:
                skipped.append(name.removesuffix(".weight"))
    config = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": list(block),
        "modules_to_not_convert": sorted(skipped),
    }
    return out, config
