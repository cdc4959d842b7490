"""The hybrid decoder stack as a differentiable function of its canonical weights (for training).

Same math as `engine.models.hybrid.HybridModel` (which runs over the paged cache and writes it in
place, so autograd cannot go through it), laid out for training: a dense batch [B, T] of
sequences that all start at position 0, no cache. Weights stay in the canonical layout of
`engine.models.checkpoint_format` ([out, in]), so a trained dict is written as a checkpoint as is.
A test holds the two forwards together (and the checkpoint to transformers' logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.model_config import ModelConfig
from engine.ops.gdn_chunked import chunk_gated_delta_rule
from engine.ops.moe_autograd import MoeWeights
from engine.ops.moe_autograd import sparse_moe as ops_sparse_moe
from engine.ops.moe_autograd import swiglu as ops_swiglu
from engine.ops.norms import gated_rms_norm, l2_normalize, rms_norm_zero_centered
from engine.ops.rope import apply_rope, rope_cos_sin

Weights = dict[str, torch.Tensor]


def hidden_states(cfg: ModelConfig, w: Weights, token_ids: torch.Tensor) -> torch.Tensor:
    """token_ids [B, T] → the final-normed hidden states [B, T, H] (what lm_head and MTP read)."""
    x = F.embedding(token_ids, w["embed_tokens.weight"])
    positions = torch.arange(token_ids.shape[1], device=token_ids.device)
    rope = rope_cos_sin(positions, cfg.rotary_dim, cfg.rope_theta, x.dtype)
    for i, kind in enumerate(cfg.layer_types):
        p = f"layers.{i}."
        h = rms_norm_zero_centered(x, w[p + "input_layernorm.weight"], cfg.rms_norm_eps)
        if kind == "full_attention":
            x = x + gated_attention(cfg, w, p + "self_attn.", h, rope)
        else:
            x = x + gated_deltanet(cfg, w, p + "linear_attn.", h)
        h = rms_norm_zero_centered(x, w[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
        x = x + (sparse_moe(cfg, w, p + "mlp.", h) if cfg.is_moe_layer(i) else swiglu(w, p + "mlp.", h))
    return rms_norm_zero_centered(x, w["norm.weight"], cfg.rms_norm_eps)


def lm_head(cfg: ModelConfig, w: Weights) -> torch.Tensor:
    return w["embed_tokens.weight"] if cfg.tie_word_embeddings else w["lm_head.weight"]


def logits(cfg: ModelConfig, w: Weights, token_ids: torch.Tensor) -> torch.Tensor:
    return F.linear(hidden_states(cfg, w, token_ids), lm_head(cfg, w)).float()


def gated_attention(cfg: ModelConfig, w: Weights, p: str, x: torch.Tensor, rope) -> torch.Tensor:
    batch, steps, _ = x.shape
    heads, kv_heads, dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q_gate = _linear(w, p + "q_proj", x).view(batch, steps, heads, 2 * dim)
    q, gate = torch.chunk(q_gate, 2, dim=-1)
    k = _linear(w, p + "k_proj", x).view(batch, steps, kv_heads, dim)
    v = _linear(w, p + "v_proj", x).view(batch, steps, kv_heads, dim)
    q = apply_rope(rms_norm_zero_centered(q, w[p + "q_norm.weight"], cfg.rms_norm_eps), *rope)
    k = apply_rope(rms_norm_zero_centered(k, w[p + "k_norm.weight"], cfg.rms_norm_eps), *rope)
    group = heads // kv_heads
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=dim**-0.5
    ).transpose(1, 2)
    out = out.reshape(batch, steps, heads * dim) * torch.sigmoid(gate.reshape(batch, steps, heads * dim))
    return _linear(w, p + "o_proj", out)


def gated_deltanet(cfg: ModelConfig, w: Weights, p: str, x: torch.Tensor) -> torch.Tensor:
    batch, steps, _ = x.shape
    mixed = F.linear(x, w[p + "in_proj_qkv.weight"])
    z, b, a = (F.linear(x, w[p + f"in_proj_{n}.weight"]) for n in "zba")
    conv = w[p + "conv1d.weight"]  # [C, 1, K]: causal depthwise conv from a zero state
    mixed = F.conv1d(mixed.transpose(1, 2), conv, padding=conv.shape[-1] - 1, groups=conv.shape[0])
    mixed = F.silu(mixed[..., :steps]).transpose(1, 2)
    kd, vd = cfg.linear_key_dim, cfg.linear_value_dim
    q, k, v = torch.split(mixed, [kd, kd, vd], dim=-1)
    nk, nv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
    q = l2_normalize(q.reshape(batch, steps, nk, -1).float()).repeat_interleave(nv // nk, dim=2)
    k = l2_normalize(k.reshape(batch, steps, nk, -1).float()).repeat_interleave(nv // nk, dim=2)
    v = v.reshape(batch, steps, nv, -1)
    beta = torch.sigmoid(b.float())
    g = -w[p + "A_log"].float().exp() * F.softplus(a.float() + w[p + "dt_bias"].float())
    core, _ = chunk_gated_delta_rule(q, k, v, g, beta)
    out = gated_rms_norm(core, z.reshape(core.shape), w[p + "norm.weight"], cfg.rms_norm_eps)
    return F.linear(out.reshape(batch, steps, -1), w[p + "out_proj.weight"])


def swiglu(w: Weights, p: str, x: torch.Tensor) -> torch.Tensor:
    names = (f"{p}{n}_proj.weight" for n in ("gate", "up", "down"))
    return ops_swiglu(x, *(w[name].t() for name in names))


def sparse_moe(cfg: ModelConfig, w: Weights, p: str, x: torch.Tensor) -> torch.Tensor:
    """The MoE block of `engine.ops.moe_autograd` over the checkpoint-layout weights: each hit
    expert once over its rows, plus the sigmoid-gated shared expert."""
    moe = MoeWeights.checkpoint_layout(w, p)
    out = ops_sparse_moe(x.reshape(-1, x.shape[-1]), moe, cfg.num_experts_per_tok, cfg.norm_topk_prob)
    return out.reshape(x.shape)


def _linear(w: Weights, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w[name + ".weight"], w.get(name + ".bias"))
