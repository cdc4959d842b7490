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

DTYPE_BYTES: dict[str, float] = {
    "fp32": 4,
    "float32": 4,
    "bf16": 2,
    "bfloat16": 2,
    "fp16": 2,
    "float16": 2,
    "fp8": 1,
    "float8": 1,
    "fp4": 0.5,
    "nvfp4": 0.5,
}
B200_HBM_BYTES = 192 * 10**9


class SizingConfigError(ValueError):
    """The config.json lacks a field the arithmetic needs, or holds a nonsensical value."""


def dtype_bytes(name: str) -> float:
    try:
        return DTYPE_BYTES[name.lower()]
    except KeyError:
        raise SizingConfigError(f"unknown dtype {name!r}; known: {sorted(DTYPE_BYTES)}") from None


@dataclass(frozen=True, slots=True)
class HybridShape:
    """The text model's dimensions that memory depends on."""

    model_type: str
    vocab_size: int
    hidden_size: int
    layer_types: tuple[str, ...]
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int
    num_experts: int
    moe_intermediate_size: int
    shared_expert_intermediate_size: int
    intermediate_size: int
    moe_layer_ids: tuple[int, ...]
    tie_word_embeddings: bool
    mamba_ssm_dtype: str
    mtp_num_hidden_layers: int

    @property
    def num_full_layers(self) -> int:
        return self.layer_types.count("full_attention")

    @property
    def num_linear_layers(self) -> int:
        return self.layer_types.count("linear_attention")

    @property
    def linear_key_dim(self) -> int:
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def linear_value_dim(self) -> int:
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def conv_dim(self) -> int:
        # The short convolution runs over the concatenated q, k, v projections.
        return 2 * self.linear_key_dim + self.linear_value_dim


def _required(text: dict, key: str) -> int:
    value = text.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SizingConfigError(f"config.json: {key} must be a non-negative integer, got {value!r}")
    return value


def _layer_types(text: dict, num_layers: int) -> tuple[str, ...]:
    if "layer_types" in text:
        types = tuple(text["layer_types"])
        if len(types) != num_layers or set(types) - {"full_attention", "linear_attention"}:
            raise SizingConfigError(
                "config.json: layer_types must list num_hidden_layers entries, "
                "each 'full_attention' or 'linear_attention'"
            )
        return types
    interval = text.get("full_attention_interval", 4)
    if not isinstance(interval, int) or interval < 1:
        raise SizingConfigError(f"config.json: full_attention_interval must be >= 1, got {interval!r}")
    return tuple(
        "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(num_layers)
    )


def _moe_layer_ids(text: dict, num_layers: int) -> tuple[int, ...]:
    if not text.get("num_experts"):
        return ()
    dense = set(text.get("mlp_only_layers") or [])
    step = text.get("decoder_sparse_step", 1) or 1
    return tuple(i for i in range(num_layers) if i not in dense and (i + 1) % step == 0)


def shape_from_config(raw: dict) -> HybridShape:
    """Reads a Hugging Face config.json dict; wrapper configs keep the text model in text_config."""
    if not isinstance(raw, dict):
        raise SizingConfigError("config.json must hold a JSON object")
    text = raw.get("text_config") or raw
    num_layers = _required(text, "num_hidden_layers")
    hidden = _required(text, "hidden_size")
    heads = _required(text, "num_attention_heads")
    if heads == 0:
        raise SizingConfigError("config.json: num_attention_heads must be positive")
    tie = text.get("tie_word_embeddings", raw.get("tie_word_embeddings", False))
    return HybridShape(
        model_type=str(text.get("model_type") or raw.get("model_type") or "unknown"),
        vocab_size=_required(text, "vocab_size"),
        hidden_size=hidden,
        layer_types=_layer_types(text, num_layers),
        num_attention_heads=heads,
        num_key_value_heads=text.get("num_key_value_heads", heads),
        head_dim=text.get("head_dim") or hidden // heads,
        linear_num_key_heads=_required(text, "linear_num_key_heads"),
        linear_num_value_heads=_required(text, "linear_num_value_heads"),
        linear_key_head_dim=_required(text, "linear_key_head_dim"),
        linear_value_head_dim=_required(text, "linear_value_head_dim"),
        linear_conv_kernel_dim=_required(text, "linear_conv_kernel_dim"),
        num_experts=text.get("num_experts", 0) or 0,
        moe_intermediate_size=text.get("moe_intermediate_size", 0) or 0,
        shared_expert_intermediate_size=text.get("shared_expert_intermediate_size", 0) or 0,
        intermediate_size=text.get("intermediate_size", 0) or 0,
        moe_layer_ids=_moe_layer_ids(text, num_layers),
        tie_word_embeddings=bool(tie),
        mamba_ssm_dtype=str(text.get("mamba_ssm_dtype", "float32")),
        mtp_num_hidden_layers=text.get("mtp_num_hidden_layers", 0) or 0,
    )


# --- per-session memory -------------------------------------------------------------------------


def kv_bytes_per_token(shape: HybridShape, kv_dtype_bytes: float) -> float:
    return shape.num_full_layers * 2 * shape.num_key_value_heads * shape.head_dim * kv_dtype_bytes


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
    ssm_bytes = dtype_bytes(ssm_dtype or shape.mamba_ssm_dtype)
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
    mtp: int

    @property
    def total(self) -> int:
        return (
            self.embeddings
            + self.attention
            + self.linear_attention
            + self.routed_experts
            + self.shared_experts
            + self.dense_mlp
            + self.norms_and_routers
            + self.lm_head
            + self.mtp
        )


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
        attention=s.num_full_layers * _attention_layer_params(s),
        linear_attention=s.num_linear_layers * _linear_layer_params(s),
        routed_experts=num_moe * routed,
        shared_experts=num_moe * shared,
        dense_mlp=dense_mlp,
        norms_and_routers=num_moe * gates + num_layers * 2 * s.hidden_size + s.hidden_size,
        lm_head=0 if s.tie_word_embeddings else s.vocab_size * s.hidden_size,
        mtp=s.mtp_num_hidden_layers * mtp_layer,
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
