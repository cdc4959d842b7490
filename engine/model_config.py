"""`ModelConfig`: the parts of a Hugging Face `config.json` the runtime needs, for the hybrid families.

Supported model types (as `transformers` 5 names them):
- `qwen3_next`: Qwen3-Next; MoE on every `decoder_sparse_step`-th layer not in `mlp_only_layers`.
- `qwen3_5_text`: dense Qwen3.5 text model.
- `qwen3_5_moe_text`: MoE Qwen3.5 text model (every layer MoE, top-k always renormalised).
- `qwen3_5`, `qwen3_5_moe`: the multimodal wrappers; their `text_config` holds the text model and
  their checkpoints prefix the text weights with `model.language_model.`.

Real checkpoints carry `rope_theta` / `partial_rotary_factor` either at the top level or inside
`rope_parameters`; both are accepted (top level wins only when `rope_parameters` lacks the key).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TEXT_MODEL_TYPES = ("qwen3_next", "qwen3_5_text", "qwen3_5_moe_text")
WRAPPER_MODEL_TYPES = {"qwen3_5": "qwen3_5_text", "qwen3_5_moe": "qwen3_5_moe_text"}
LAYER_KINDS = ("linear_attention", "full_attention")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(name: str | torch.dtype | None, default: torch.dtype = torch.float32) -> torch.dtype:
    """`"bfloat16"` / `"torch.bfloat16"` / a torch dtype → torch dtype; None → `default`."""
    if name is None:
        return default
    if isinstance(name, torch.dtype):
        return name
    key = str(name).removeprefix("torch.").lower()
    if key not in _DTYPES:
        raise ValueError(f"unsupported dtype {name!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[key]


@dataclass(frozen=True, slots=True)
class ModelConfig:
    model_type: str  # as written in config.json (may be a wrapper type)
    text_model_type: str  # one of TEXT_MODEL_TYPES
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    layer_types: tuple[str, ...]
    # gated full attention
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    partial_rotary_factor: float
    rope_theta: float
    attention_bias: bool
    # gated DeltaNet
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int
    # MLP / MoE (num_experts == 0: dense everywhere)
    hidden_act: str
    intermediate_size: int
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    shared_expert_intermediate_size: int
    norm_topk_prob: bool
    decoder_sparse_step: int
    mlp_only_layers: tuple[int, ...]
    # misc
    rms_norm_eps: float
    tie_word_embeddings: bool
    dtype: torch.dtype
    mamba_ssm_dtype: torch.dtype
    mtp_num_hidden_layers: int
    max_position_embeddings: int
    eos_token_id: tuple[int, ...]
    pad_token_id: int | None
    weight_prefix: str  # "model." or "model.language_model."

    @classmethod
    def from_json(cls, source: str | Path | dict[str, Any]) -> ModelConfig:
        """Parse a `config.json` (path to the file, to its directory, or the dict itself)."""
        if isinstance(source, dict):
            raw = source
        else:
            path = Path(source)
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise FileNotFoundError(f"no config.json at {path}")
            raw = json.loads(path.read_text())
        return _parse(raw)

    # --- layer bookkeeping -------------------------------------------------------------------
    @property
    def attention_layer_ids(self) -> list[int]:
        return [i for i, kind in enumerate(self.layer_types) if kind == "full_attention"]

    @property
    def linear_layer_ids(self) -> list[int]:
        return [i for i, kind in enumerate(self.layer_types) if kind == "linear_attention"]

    @property
    def num_attention_layers(self) -> int:
        return len(self.attention_layer_ids)

    @property
    def num_linear_layers(self) -> int:
        return len(self.linear_layer_ids)

    def is_moe_layer(self, layer_id: int) -> bool:
        if self.num_experts <= 0 or layer_id in self.mlp_only_layers:
            return False
        return (layer_id + 1) % self.decoder_sparse_step == 0

    # --- derived sizes -----------------------------------------------------------------------
    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def linear_key_dim(self) -> int:
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def linear_value_dim(self) -> int:
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the depthwise conv: q, k and v of a DeltaNet layer, concatenated."""
        return 2 * self.linear_key_dim + self.linear_value_dim


def _parse(raw: dict[str, Any]) -> ModelConfig:
    model_type = raw.get("model_type")
    if model_type in WRAPPER_MODEL_TYPES:
        text = dict(raw.get("text_config") or {})
        if not text:
            raise ValueError(f"config of model type {model_type!r} has no text_config")
        text.setdefault("model_type", WRAPPER_MODEL_TYPES[model_type])
        text_model_type, prefix = WRAPPER_MODEL_TYPES[model_type], "model.language_model."
        for key in ("tie_word_embeddings", "eos_token_id", "dtype", "torch_dtype"):
            if key not in text and key in raw:
                text[key] = raw[key]
    elif model_type in TEXT_MODEL_TYPES:
        text, text_model_type, prefix = raw, model_type, "model."
    else:
        supported = sorted((*TEXT_MODEL_TYPES, *WRAPPER_MODEL_TYPES))
        raise ValueError(f"unsupported model type {model_type!r}; supported: {supported}")
    return _parse_text(text, model_type, text_model_type, prefix)


def _rope_value(text: dict[str, Any], key: str, default: float) -> float:
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    if key in rope:
        return float(rope[key])
    return float(text.get(key, default))


def _layer_types(text: dict[str, Any], num_layers: int) -> tuple[str, ...]:
    layer_types = text.get("layer_types")
    if layer_types is None:
        interval = int(text.get("full_attention_interval", 4))
        layer_types = [
            "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(num_layers)
        ]
    layer_types = tuple(layer_types)[:num_layers]
    if len(layer_types) != num_layers:
        raise ValueError(f"layer_types has {len(layer_types)} entries for {num_layers} layers")
    unknown = sorted(set(layer_types) - set(LAYER_KINDS))
    if unknown:
        raise ValueError(f"unknown layer types {unknown}; expected {LAYER_KINDS}")
    return layer_types


def _parse_text(text: dict[str, Any], model_type: str, text_model_type: str, prefix: str) -> ModelConfig:
    def need(key: str) -> Any:
        if key not in text:
            raise ValueError(f"config.json ({model_type}) lacks required field {key!r}")
        return text[key]

    num_layers = int(need("num_hidden_layers"))
    num_heads = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    is_moe = text_model_type != "qwen3_5_text"
    num_experts = int(text.get("num_experts", 0) or 0) if is_moe else 0
    eos = text.get("eos_token_id")
    eos_ids = () if eos is None else tuple(eos) if isinstance(eos, list | tuple) else (int(eos),)
    model_dtype = parse_dtype(text.get("dtype") or text.get("torch_dtype"), torch.float32)
    return ModelConfig(
        model_type=model_type,
        text_model_type=text_model_type,
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        layer_types=_layer_types(text, num_layers),
        num_attention_heads=num_heads,
        num_key_value_heads=int(text.get("num_key_value_heads", num_heads)),
        head_dim=int(text.get("head_dim") or hidden // num_heads),
        partial_rotary_factor=_rope_value(text, "partial_rotary_factor", 0.25),
        rope_theta=_rope_value(text, "rope_theta", 10000.0),
        attention_bias=bool(text.get("attention_bias", False)),
        linear_num_key_heads=int(text.get("linear_num_key_heads", 16)),
        linear_num_value_heads=int(text.get("linear_num_value_heads", 32)),
        linear_key_head_dim=int(text.get("linear_key_head_dim", 128)),
        linear_value_head_dim=int(text.get("linear_value_head_dim", 128)),
        linear_conv_kernel_dim=int(text.get("linear_conv_kernel_dim", 4)),
        hidden_act=str(text.get("hidden_act", "silu")),
        intermediate_size=int(text.get("intermediate_size", 0) or 0),
        num_experts=num_experts,
        num_experts_per_tok=int(text.get("num_experts_per_tok", 0) or 0) if is_moe else 0,
        moe_intermediate_size=int(text.get("moe_intermediate_size", 0) or 0) if is_moe else 0,
        shared_expert_intermediate_size=int(text.get("shared_expert_intermediate_size", 0) or 0),
        # Qwen3.5-MoE's router always renormalises the top-k weights.
        norm_topk_prob=True
        if text_model_type == "qwen3_5_moe_text"
        else bool(text.get("norm_topk_prob", True)),
        decoder_sparse_step=int(text.get("decoder_sparse_step", 1) or 1)
        if text_model_type == "qwen3_next"
        else 1,
        mlp_only_layers=tuple(text.get("mlp_only_layers") or ()) if text_model_type == "qwen3_next" else (),
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
        dtype=model_dtype,
        mamba_ssm_dtype=parse_dtype(text.get("mamba_ssm_dtype"), torch.float32),
        mtp_num_hidden_layers=int(text.get("mtp_num_hidden_layers", 0) or 0),
        max_position_embeddings=int(text.get("max_position_embeddings", 32768)),
        eos_token_id=eos_ids,
        pad_token_id=text.get("pad_token_id"),
        weight_prefix=prefix,
    )
