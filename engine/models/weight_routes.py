"""Where one checkpoint tensor goes in the runtime's canonical layout, so the loader can place each
tensor as it arrives (see `checkpoint_format` for the layouts).

A tensor becomes one or more `Piece`s: a whole canonical tensor (`index` None), or a slice of a
stacked one — Qwen3-Next's per-expert `experts.{e}.gate_proj / up_proj / down_proj` land in rows of
the preallocated `experts.gate_up_proj [E, 2I, H]` / `experts.down_proj [E, H, I]`; its fused
`in_proj_qkvz` / `in_proj_ba` split into whole canonical tensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from engine.model_config import ModelConfig
from engine.models.checkpoint_format import split_ba, split_qkvz_alone

_PER_EXPERT = re.compile(r"^(.*layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_FUSED = re.compile(r"^(.*linear_attn)\.(in_proj_qkvz|in_proj_ba)\.weight$")


@dataclass(frozen=True, slots=True)
class Piece:
    target: str  # canonical name (relative to the text prefix; MTP ones keep `mtp.`)
    index: tuple | None  # where in the stacked target; None = the whole target
    tensor: torch.Tensor


def route(cfg: ModelConfig, name: str, tensor: torch.Tensor, moe_intermediate: int) -> list[Piece]:
    """`name`: prefix-stripped checkpoint name (`layers.0....`, `lm_head.weight`, `mtp....`)."""
    if match := _PER_EXPERT.match(name):
        base, expert, kind = match[1], int(match[2]), match[3]
        if kind == "down_proj":
            return [Piece(f"{base}.down_proj", (expert,), tensor)]
        rows = (
            slice(0, moe_intermediate)
            if kind == "gate_proj"
            else slice(moe_intermediate, 2 * moe_intermediate)
        )
        return [Piece(f"{base}.gate_up_proj", (expert, rows), tensor)]
    if match := _FUSED.match(name):
        base, kind = match[1], match[2]
        parts = split_qkvz_alone(cfg, tensor) if kind == "in_proj_qkvz" else split_ba(cfg, tensor)
        return [Piece(f"{base}.{part}.weight", None, t) for part, t in parts.items()]
    return [Piece(name, None, tensor)]
