"""Tensor names and layouts of Hugging Face checkpoints ⇄ the runtime's canonical layout.

Canonical (per decoder layer `layers.{i}.`, relative to the text-model prefix):
- DeltaNet: `linear_attn.in_proj_qkv` [2*Kd+Vd, H], `in_proj_z` [Vd, H], `in_proj_b`/`in_proj_a`
  [Hv, H], `conv1d.weight` [2*Kd+Vd, 1, K], `dt_bias`, `A_log` [Hv], `norm.weight` [Dv], `out_proj`.
  This is Qwen3.5's layout. Qwen3-Next fuses the same rows as `in_proj_qkvz` / `in_proj_ba`,
  grouped per key head ([q, k, v-group, z-group] and [b-group, a-group]); we split them at load.
- MoE experts: fused `mlp.experts.gate_up_proj` [E, 2I, H] (gate rows first) and
  `mlp.experts.down_proj` [E, H, I] (Qwen3.5-MoE hub layout). Qwen3-Next hub checkpoints store one
  module per expert (`mlp.experts.{e}.gate_proj.weight` ...); we stack them at load.
"""

from __future__ import annotations

import re

import torch

from engine.model_config import ModelConfig

_PER_EXPERT = re.compile(r"^(layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def split_qkvz(cfg: ModelConfig, qkvz: torch.Tensor, ba: torch.Tensor) -> dict[str, torch.Tensor]:
    """Qwen3-Next fused projections → canonical `in_proj_qkv`, `in_proj_z`, `in_proj_b`, `in_proj_a`."""
    return {**split_qkvz_alone(cfg, qkvz), **split_ba(cfg, ba)}


def split_qkvz_alone(cfg: ModelConfig, qkvz: torch.Tensor) -> dict[str, torch.Tensor]:
    """Qwen3-Next `in_proj_qkvz` (rows grouped per key head: [q, k, v-group, z-group]) → canonical
    `in_proj_qkv` and `in_proj_z`."""
    nk, dk, dv = cfg.linear_num_key_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim
    group = cfg.linear_num_value_heads // nk
    hidden = qkvz.shape[-1]
    per_head = qkvz.reshape(nk, 2 * dk + 2 * group * dv, hidden)
    q, k, v, z = torch.split(per_head, [dk, dk, group * dv, group * dv], dim=1)
    flat = [t.reshape(-1, hidden) for t in (q, k, v)]
    return {"in_proj_qkv": torch.cat(flat, dim=0), "in_proj_z": z.reshape(-1, hidden)}


def split_ba(cfg: ModelConfig, ba: torch.Tensor) -> dict[str, torch.Tensor]:
    """Qwen3-Next `in_proj_ba` ([b-group, a-group] per key head) → canonical `in_proj_b`, `in_proj_a`."""
    nk = cfg.linear_num_key_heads
    group = cfg.linear_num_value_heads // nk
    hidden = ba.shape[-1]
    b, a = torch.split(ba.reshape(nk, 2 * group, hidden), [group, group], dim=1)
    return {"in_proj_b": b.reshape(-1, hidden), "in_proj_a": a.reshape(-1, hidden)}


def fuse_qkvz(cfg: ModelConfig, parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `split_qkvz` (used when writing Qwen3-Next checkpoints)."""
    nk, dk, dv = cfg.linear_num_key_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim
    group = cfg.linear_num_value_heads // nk
    hidden = parts["in_proj_qkv"].shape[-1]
    q, k, v = torch.split(parts["in_proj_qkv"], [nk * dk, nk * dk, nk * group * dv], dim=0)
    heads = [
        t.reshape(nk, -1, hidden)
        for t in (q, k, v, parts["in_proj_z"], parts["in_proj_b"], parts["in_proj_a"])
    ]
    qkvz = torch.cat(heads[:4], dim=1).reshape(-1, hidden)
    ba = torch.cat(heads[4:], dim=1).reshape(-1, hidden)
    return qkvz, ba


def canonicalize(cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF tensors (text-model prefix already stripped) → canonical names and layouts."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if match := _PER_EXPERT.match(name):
            experts.setdefault(match[1], {}).setdefault(int(match[2]), {})[match[3]] = tensor
        elif name.endswith(("linear_attn.in_proj_qkvz.weight", "linear_attn.in_proj_ba.weight")):
            base, kind = name.rsplit(".", 2)[0], name.rsplit(".", 2)[1]
            fused.setdefault(base, {})[kind] = tensor
        else:
            out[name] = tensor
    for base, pair in fused.items():
        if set(pair) != {"in_proj_qkvz", "in_proj_ba"}:
            missing = ({"in_proj_qkvz", "in_proj_ba"} - set(pair)).pop()
            raise KeyError(f"{base}.{missing}.weight")
        for part, weight in split_qkvz(cfg, pair["in_proj_qkvz"], pair["in_proj_ba"]).items():
            out[f"{base}.{part}.weight"] = weight
    for base, by_index in experts.items():
        out.update(_stack_experts(cfg, base, by_index))
    return out


def _stack_experts(
    cfg: ModelConfig, base: str, by_index: dict[int, dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    gate_up, down = [], []
    for e in range(cfg.num_experts):
        parts = by_index.get(e, {})
        for kind in ("gate_proj", "up_proj", "down_proj"):
            if kind not in parts:
                raise KeyError(f"{base}.{e}.{kind}.weight")
        gate_up.append(torch.cat([parts["gate_proj"], parts["up_proj"]], dim=0))
        down.append(parts["down_proj"])
    return {f"{base}.gate_up_proj": torch.stack(gate_up), f"{base}.down_proj": torch.stack(down)}


def to_hf(cfg: ModelConfig, canonical: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical tensors → the names/layouts of this model type's HF checkpoints (with prefix)."""
    out: dict[str, torch.Tensor] = {}
    qwen3_next = cfg.text_model_type == "qwen3_next"
    for name, tensor in canonical.items():
        if qwen3_next and name.endswith("linear_attn.in_proj_qkv.weight"):
            base = name.rsplit(".", 2)[0]
            parts = {
                p: canonical[f"{base}.{p}.weight"]
                for p in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")
            }
            qkvz, ba = fuse_qkvz(cfg, parts)
            out[f"{base}.in_proj_qkvz.weight"], out[f"{base}.in_proj_ba.weight"] = qkvz, ba
        elif qwen3_next and name.endswith(("in_proj_z.weight", "in_proj_b.weight", "in_proj_a.weight")):
            continue
        elif qwen3_next and name.endswith("mlp.experts.gate_up_proj"):
            base = name.rsplit(".", 1)[0]
            inter = tensor.shape[1] // 2
            for e in range(tensor.shape[0]):
                out[f"{base}.{e}.gate_proj.weight"] = tensor[e, :inter].contiguous()
                out[f"{base}.{e}.up_proj.weight"] = tensor[e, inter:].contiguous()
                out[f"{base}.{e}.down_proj.weight"] = canonical[f"{base}.down_proj"][e].contiguous()
        elif qwen3_next and name.endswith("mlp.experts.down_proj"):
            continue
        else:
            out[name] = tensor
    prefixed = {}
    for name, tensor in out.items():
        if name == "lm_head.weight" or name.startswith("mtp."):
            prefixed[name] = tensor
        else:
            prefixed[cfg.weight_prefix + name] = tensor
    return prefixed


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor of the text model (no prefix) and its shape."""
    h = cfg.hidden_size
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (cfg.vocab_size, h), "norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    for i, kind in enumerate(cfg.layer_types):
        p = f"layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes.update({p + k: v for k, v in _mixer_shapes(cfg, kind).items()})
        shapes.update({p + k: v for k, v in _mlp_shapes(cfg, i).items()})
    return shapes


def _mixer_shapes(cfg: ModelConfig, kind: str) -> dict[str, tuple[int, ...]]:
    h = cfg.hidden_size
    if kind == "full_attention":
        q_out, kv_out = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        shapes = {
            "self_attn.q_proj.weight": (2 * q_out, h),
            "self_attn.k_proj.weight": (kv_out, h),
            "self_attn.v_proj.weight": (kv_out, h),
            "self_attn.o_proj.weight": (h, q_out),
            "self_attn.q_norm.weight": (cfg.head_dim,),
            "self_attn.k_norm.weight": (cfg.head_dim,),
        }
        if cfg.attention_bias:
            shapes.update(
                {
                    "self_attn.q_proj.bias": (2 * q_out,),
                    "self_attn.k_proj.bias": (kv_out,),
                    "self_attn.v_proj.bias": (kv_out,),
                    "self_attn.o_proj.bias": (h,),
                }
            )
        return shapes
    nv = cfg.linear_num_value_heads
    return {
        "linear_attn.in_proj_qkv.weight": (cfg.conv_dim, h),
        "linear_attn.in_proj_z.weight": (cfg.linear_value_dim, h),
        "linear_attn.in_proj_b.weight": (nv, h),
        "linear_attn.in_proj_a.weight": (nv, h),
        "linear_attn.conv1d.weight": (cfg.conv_dim, 1, cfg.linear_conv_kernel_dim),
        "linear_attn.dt_bias": (nv,),
        "linear_attn.A_log": (nv,),
        "linear_attn.norm.weight": (cfg.linear_value_head_dim,),
        "linear_attn.out_proj.weight": (h, cfg.linear_value_dim),
    }


def _mlp_shapes(cfg: ModelConfig, layer_id: int) -> dict[str, tuple[int, ...]]:
    h = cfg.hidden_size
    if not cfg.is_moe_layer(layer_id):
        inter = cfg.intermediate_size
        return {
            "mlp.gate_proj.weight": (inter, h),
            "mlp.up_proj.weight": (inter, h),
            "mlp.down_proj.weight": (h, inter),
        }
    e, inter, shared = cfg.num_experts, cfg.moe_intermediate_size, cfg.shared_expert_intermediate_size
    return {
        "mlp.gate.weight": (e, h),
        "mlp.experts.gate_up_proj": (e, 2 * inter, h),
        "mlp.experts.down_proj": (e, h, inter),
        "mlp.shared_expert.gate_proj.weight": (shared, h),
        "mlp.shared_expert.up_proj.weight": (shared, h),
        "mlp.shared_expert.down_proj.weight": (h, shared),
        "mlp.shared_expert_gate.weight": (1, h),
    }
