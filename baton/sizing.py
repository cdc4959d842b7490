"""Memory sizing for hybrid-attention models (Qwen3-Next / Qwen3.5) from a raw `config.json` dict.

Pure arithmetic, no torch: `baton size` runs on a laptop against a downloaded config.json.
The per-session layout mirrors `engine/cache/tensors.py` (docs/CONTRACTS.md):

    kv   per full-attention layer: 2 x num_kv_heads x head_dim per token, in pages of block_size
    conv per linear layer: conv_dim x (conv_kernel - 1)                      (model dtype)
    ssm  per linear layer: num_v_heads x k_head_dim x v_head_dim             (mamba_ssm_dtype, fp32)

A radix-tree checkpoint is a copy of one state slot (conv + ssm of every linear layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.hf_config import DTYPE_BYTES, ConfigError, TextConfig, canonical_dtype, parse_config

B200_HBM_BYTES = 192 * 10**9

# The one config parse and dtype table (torch-free), shared with the engine.
SizingConfigError = ConfigError
HybridShape = TextConfig


def dtype_bytes(name: str) -> float:
    return DTYPE_BYTES[canonical_dtype(name)]


def shape_from_config(raw: dict) -> TextConfig:
    """Reads a Hugging Face config.json dict; wrapper configs keep the text model in text_config."""
    return parse_config(raw)


# --- per-session memory -------------------------------------------------------------------------


def kv_bytes_per_token(shape: HybridShape, kv_dtype_bytes: float) -> float:
    return shape.num_attention_layers * 2 * shape.num_key_value_heads * shape.head_dim * kv_dtype_bytes


def kv_bytes(shape: HybridShape, tokens: int, block_size: int, kv_dtype_bytes: float) -> float:
    """KV of `tokens` tokens, rounded up to whole pages (a partly filled page is still allocated)."""
    if block_size < 1 or tokens < 0:
        raise SizingConfigError("block size must be >= 1 and tokens >= 0")
    paged_tokens = math.ceil(tokens / block_size) * block_size
    return paged_tokens * kv_bytes_per_token(shape, kv_dtype_bytes)


def conv_state_bytes_per_layer(shape: HybridShape, state_dtype_bytes: float) -> float:
    return shape.conv_dim * (shape.linear_conv_kernel_dim - 1) * state_dtype_bytes


def recurrent_state_bytes_per_layer(shape: HybridShape, ssm_dtype_bytes: float) -> float:
    return (
        shape.linear_num_value_heads
        * shape.linear_key_head_dim
        * shape.linear_value_head_dim
        * ssm_dtype_bytes
    )


def state_slot_bytes(shape: HybridShape, state_dtype_bytes: float, ssm_dtype_bytes: float) -> float:
    """One DeltaNet state slot: conv + recurrent state of every linear layer (= one checkpoint)."""
    per_layer = conv_state_bytes_per_layer(shape, state_dtype_bytes) + recurrent_state_bytes_per_layer(
        shape, ssm_dtype_bytes
    )
    return shape.num_linear_layers * per_layer


@dataclass(frozen=True, slots=True)
class SessionMemory:
    context_tokens: int
    kv_bytes: float
    state_bytes: float
    checkpoint_bytes: float  # all checkpoints of the session together
    num_checkpoints: int

    @property
    def total_bytes(self) -> float:
        return self.kv_bytes + self.state_bytes + self.checkpoint_bytes


def session_memory(
    shape: HybridShape,
    context_tokens: int,
    *,
    block_size: int,
    dtype: str,
    ssm_dtype: str | None = None,
    num_checkpoints: int = 1,
) -> SessionMemory:
    model_bytes = dtype_bytes(dtype)
    ssm_bytes = dtype_bytes(ssm_dtype or shape.mamba_ssm_dtype_name)
    slot = state_slot_bytes(shape, model_bytes, ssm_bytes)
    return SessionMemory(
        context_tokens=context_tokens,
        kv_bytes=kv_bytes(shape, context_tokens, block_size, model_bytes),
        state_bytes=slot,
        checkpoint_bytes=num_checkpoints * slot,
        num_checkpoints=num_checkpoints,
    )


# --- weights --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParamCounts:
    embeddings: int
    attention: int
    linear_attention: int
    routed_experts: int
    shared_experts: int
    dense_mlp: int
    norms_and_routers: int
    lm_head: int
    mtp: int  # counted apart: not in `total` or `active`
    routed_experts_active: int  # the routed-expert weights one token uses (top-k of each MoE layer)

    @property
    def total(self) -> int:
        """The main model's parameters (what model cards publish), without the MTP head."""
        return (
            self.embeddings
            + self.attention
            + self.linear_attention
            + self.routed_experts
            + self.shared_experts
            + self.dense_mlp
            + self.norms_and_routers
            + self.lm_head
        )

    @property
    def active(self) -> int:
        """Parameters one token runs through (the "A3B" / "A17B" of the names), without MTP."""
        return self.total - self.routed_experts + self.routed_experts_active

    @property
    def total_with_mtp(self) -> int:
        return self.total + self.mtp


def _attention_layer_params(s: HybridShape) -> int:
    q_and_gate = s.hidden_size * s.num_attention_heads * s.head_dim * 2  # gated attention output
    k_and_v = 2 * s.hidden_size * s.num_key_value_heads * s.head_dim
    out = s.num_attention_heads * s.head_dim * s.hidden_size
    return q_and_gate + k_and_v + out + 2 * s.head_dim  # + q_norm, k_norm


def _linear_layer_params(s: HybridShape) -> int:
    qkvz = s.hidden_size * (2 * s.linear_key_dim + 2 * s.linear_value_dim)
    beta_and_decay = s.hidden_size * 2 * s.linear_num_value_heads
    conv = s.conv_dim * s.linear_conv_kernel_dim
    per_head = 2 * s.linear_num_value_heads  # dt_bias, A_log
    gated_norm = s.linear_value_head_dim
    out = s.linear_value_dim * s.hidden_size
    return qkvz + beta_and_decay + conv + per_head + gated_norm + out


def _moe_parts(s: HybridShape) -> tuple[int, int, int]:
    """(routed experts, shared expert, router + shared-expert gate) of one MoE layer."""
    routed = s.num_experts * 3 * s.hidden_size * s.moe_intermediate_size
    shared = 3 * s.hidden_size * s.shared_expert_intermediate_size
    gates = s.hidden_size * s.num_experts + (s.hidden_size if s.shared_expert_intermediate_size else 0)
    return routed, shared, gates


def param_counts(s: HybridShape) -> ParamCounts:
    """Parameters of the text model (+ MTP head); a vision tower, if any, is not counted."""
    routed, shared, gates = _moe_parts(s)
    num_layers = len(s.layer_types)
    num_moe = len(s.moe_layer_ids)
    dense_mlp = (num_layers - num_moe) * 3 * s.hidden_size * s.intermediate_size
    # An MTP layer: fc over [embedding; hidden], two pre-fc norms, one full-attention MoE decoder
    # layer and a final norm; it shares the embeddings and lm_head with the main model.
    mtp_layer = (
        2 * s.hidden_size * s.hidden_size
        + 2 * s.hidden_size
        + _attention_layer_params(s)
        + routed
        + shared
        + gates
        + 2 * s.hidden_size
        + s.hidden_size
    )
    return ParamCounts(
        embeddings=s.vocab_size * s.hidden_size,
        attention=s.num_attention_layers * _attention_layer_params(s),
        linear_attention=s.num_linear_layers * _linear_layer_params(s),
        routed_experts=num_moe * routed,
        shared_experts=num_moe * shared,
        dense_mlp=dense_mlp,
        norms_and_routers=num_moe * gates + num_layers * 2 * s.hidden_size + s.hidden_size,
        lm_head=0 if s.tie_word_embeddings else s.vocab_size * s.hidden_size,
        mtp=s.mtp_num_hidden_layers * mtp_layer,
        routed_experts_active=num_moe * routed * s.num_experts_per_tok // max(s.num_experts, 1),
    )


# --- capacity ---------------------------------------------------------------------------------------


def sessions_that_fit(
    session_bytes: float,
    *,
    weight_bytes: float,
    gpus: int = 1,
    hbm_bytes_per_gpu: float = B200_HBM_BYTES,
    reserve_bytes_per_gpu: float = 16 * 10**9,
) -> int:
    """Whole sessions that fit in what HBM is left after weights and a per-GPU reserve
    (activations, CUDA graphs, communication buffers). 0 when the weights alone do not fit."""
    free = gpus * (hbm_bytes_per_gpu - reserve_bytes_per_gpu) - weight_bytes
    if free <= 0 or session_bytes <= 0:
        return 0
    return int(free // session_bytes)


# --- per GPU under tensor / expert parallelism (mirrors engine/parallel/shard.py) ---------------


@dataclass(frozen=True, slots=True)
class PerGpu:
    """What one rank of a tp/ep worker holds: its weight shard, and per session its heads' KV
    and state (every rank holds every session's pages, with 1/tp of the heads)."""

    weight_bytes: float
    kv_bytes_per_token: float
    state_slot_bytes: float


def per_gpu(
    shape: HybridShape,
    *,
    tp: int,
    ep: int,
    weight_dtype_bytes: float,
    dtype_bytes_: float,
    ssm_dtype_bytes: float,
) -> PerGpu:
    """tp splits attention q heads (kv heads, replicated when fewer than tp), DeltaNet heads, dense
    and shared MLPs and the vocab; ep splits the routed experts (under tp alone they split by
    channel). Norms, routers and the MTP head's fc are replicated; the rest of the MTP head splits
    like a main attention + MoE layer (it shares the vocab-parallel embedding and lm head)."""
    if tp < 1 or ep < 1 or tp not in (1, max(tp, ep)) or ep not in (1, max(tp, ep)):
        raise SizingConfigError(f"--tp {tp} --ep {ep}: each must be 1 or the world size")
    p = param_counts(shape)
    kv_heads = max(1, shape.num_key_value_heads // tp)
    s = shape
    attention_q_o = s.num_attention_layers * (3 * s.hidden_size * s.num_attention_heads * s.head_dim)
    attention_kv = s.num_attention_layers * 2 * s.hidden_size * s.head_dim * kv_heads
    head_norms = s.num_attention_layers * 2 * s.head_dim + s.num_linear_layers * s.linear_value_head_dim
    experts = p.routed_experts / (ep if ep > 1 else tp)
    routed, shared, gates = _moe_parts(s)
    attention_layer = (3 * s.hidden_size * s.num_attention_heads * s.head_dim) / tp
    attention_layer += 2 * s.hidden_size * s.head_dim * kv_heads + 2 * s.head_dim
    mtp_layer = (
        2 * s.hidden_size * s.hidden_size  # fc
        + 5 * s.hidden_size  # two pre-fc norms, two layer norms, the final norm
        + attention_layer
        + routed / (ep if ep > 1 else tp)
        + shared / tp
        + gates
    )
    params = (
        math.ceil(s.vocab_size / tp) * s.hidden_size * (1 if s.tie_word_embeddings else 2)
        + attention_q_o / tp
        + attention_kv
        + (p.linear_attention - s.num_linear_layers * s.linear_value_head_dim) / tp
        + head_norms
        + (p.dense_mlp + p.shared_experts) / tp
        + experts
        + p.norms_and_routers
        + (s.mtp_num_hidden_layers * mtp_layer if p.mtp else 0)
    )
    kv = s.num_attention_layers * 2 * kv_heads * s.head_dim * dtype_bytes_
    slot = state_slot_bytes(s, dtype_bytes_, ssm_dtype_bytes) / tp
    return PerGpu(weight_bytes=params * weight_dtype_bytes, kv_bytes_per_token=kv, state_slot_bytes=slot)
