"""Torch-free parse of a Hugging Face `config.json` of the hybrid families → `TextConfig`.

`engine.config.ModelConfig` (the runtime's config, with torch dtypes) and `baton size` (which must run
without torch) both build on this one parse. Supported model types (as `transformers` 5 names them):
- `qwen3_next`: Qwen3-Next; MoE on every `decoder_sparse_step`-th layer not in `mlp_only_layers`.
- `qwen3_5_text`: dense Qwen3.5 text model.
- `qwen3_5_moe_text`: MoE Qwen3.5 text model (every layer MoE, top-k always renormalised).
- `qwen3_5`, `qwen3_5_moe`: the multimodal wrappers; their `text_config` holds the text model and
  their checkpoints prefix the text weights with `model.language_model.`.

Defaults are the real configs' (transformers' / vLLM's where a released config omits a key):
- `rope_theta` / `partial_rotary_factor` sit at the top level or in `rope_parameters`; both are read.
- Qwen3-Next's released config has no `mtp_num_hidden_layers`: vLLM's `qwen3_next_mtp` then uses one
  MTP layer, and so do we (the loader keeps the head only when the `mtp.*` tensors are there).
- The released Qwen3-Next config has no `layer_types`: `full_attention_interval` lays the layers out.

Every key of the released configs is read (`READ_KEYS`) or knowingly ignored (`IGNORED_KEYS`, with
the reason); any other key is logged once. Values Baton cannot honour (a rope type other than
`default`, `attn_output_gate: false`, a quantization method it does not implement) are refused with
an error naming them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from engine.quant_config import ConfigError, QuantConfig, parse_quantization

log = logging.getLogger(__name__)

TEXT_MODEL_TYPES = ("qwen3_next", "qwen3_5_text", "qwen3_5_moe_text")
WRAPPER_MODEL_TYPES = {"qwen3_5": "qwen3_5_text", "qwen3_5_moe": "qwen3_5_moe_text"}
LAYER_KINDS = ("linear_attention", "full_attention")

# Canonical dtype names and their bytes per element (weights, KV, state); aliases map onto them.
DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "fp8": "float8_e4m3fn", "float8": "float8_e4m3fn", "float8_e4m3fn": "float8_e4m3fn",
    "fp4": "fp4", "nvfp4": "fp4",
}  # fmt: skip
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1, "fp4": 0.5}
MODEL_DTYPES = ("float32", "bfloat16", "float16")  # what weights may be computed in

READ_KEYS = frozenset(
    """model_type text_config vocab_size hidden_size num_hidden_layers layer_types
    full_attention_interval num_attention_heads num_key_value_heads head_dim partial_rotary_factor
    rope_theta rope_parameters rope_scaling attention_bias attn_output_gate linear_num_key_heads
    linear_num_value_heads linear_key_head_dim linear_value_head_dim linear_conv_kernel_dim
    hidden_act intermediate_size num_experts num_experts_per_tok moe_intermediate_size
    shared_expert_intermediate_size norm_topk_prob decoder_sparse_step mlp_only_layers rms_norm_eps
    tie_word_embeddings dtype torch_dtype mamba_ssm_dtype mtp_num_hidden_layers
    mtp_use_dedicated_embeddings max_position_embeddings eos_token_id pad_token_id
    quantization_config""".split()
)
IGNORED_KEYS = {
    "architectures": "the model type decides the architecture",
    "attention_dropout": "training only",
    "initializer_range": "training only",
    "router_aux_loss_coef": "training only",
    "output_router_logits": "training only",
    "use_cache": "the runtime always caches",
    "use_sliding_window": "false in every released config; sliding_window is then unused",
    "sliding_window": "unused without use_sliding_window",
    "max_window_layers": "unused without use_sliding_window",
    "bos_token_id": "the tokenizer / chat template adds what it needs",
    "transformers_version": "bookkeeping",
    "_name_or_path": "bookkeeping",
    "vision_config": "the vision tower is not served (text only)",
    "image_token_id": "vision (not served)",
    "video_token_id": "vision (not served)",
    "vision_start_token_id": "vision (not served)",
    "vision_end_token_id": "vision (not served)",
}
# rope_parameters keys: mrope only matters for image/video positions; for text all three sections
# get the same position, which is plain 1-D rope.
_ROPE_IGNORED = frozenset({"mrope_interleaved", "mrope_section", "rope_type"})
_logged_unknown: set[str] = set()


@dataclass(frozen=True, slots=True)
class TextConfig:
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
    dtype_name: str  # canonical name (DTYPE_BYTES)
    mamba_ssm_dtype_name: str
    mtp_num_hidden_layers: int
    max_position_embeddings: int
    eos_token_id: tuple[int, ...]
    pad_token_id: int | None
    weight_prefix: str  # "model." or "model.language_model."
    quantization: QuantConfig | None

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

    @property
    def moe_layer_ids(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_hidden_layers) if self.is_moe_layer(i))

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


def canonical_dtype(name: str | None, default: str = "float32") -> str:
    """`"bfloat16"` / `"torch.bfloat16"` / `"bf16"` → `"bfloat16"`; None → `default`."""
    if name is None:
        return default
    key = str(name).removeprefix("torch.").lower()
    if key not in DTYPE_ALIASES:
        raise ConfigError(f"unsupported dtype {name!r}; expected one of {sorted(DTYPE_ALIASES)}")
    return DTYPE_ALIASES[key]


def parse_config(raw: dict[str, Any]) -> TextConfig:
    """A config.json dict → `TextConfig`; raises ConfigError naming what is wrong or unsupported."""
    if not isinstance(raw, dict):
        raise ConfigError("config.json must hold a JSON object")
    model_type = raw.get("model_type")
    if model_type in WRAPPER_MODEL_TYPES:
        text = dict(raw.get("text_config") or {})
        if not text:
            raise ConfigError(f"config of model type {model_type!r} has no text_config")
        text.setdefault("model_type", WRAPPER_MODEL_TYPES[model_type])
        text_model_type, prefix = WRAPPER_MODEL_TYPES[model_type], "model.language_model."
        for key in ("tie_word_embeddings", "eos_token_id", "dtype", "torch_dtype", "quantization_config"):
            if key not in text and key in raw:
                text[key] = raw[key]
        _log_unknown_keys(raw, "")
        _log_unknown_keys(text, "text_config.")
    elif model_type in TEXT_MODEL_TYPES:
        text, text_model_type, prefix = raw, model_type, "model."
        _log_unknown_keys(raw, "")
    else:
        supported = sorted((*TEXT_MODEL_TYPES, *WRAPPER_MODEL_TYPES))
        raise ConfigError(f"unsupported model type {model_type!r}; supported: {supported}")
    return _parse_text(text, model_type, text_model_type, prefix)


def _log_unknown_keys(section: dict[str, Any], where: str) -> None:
    for key in sorted(set(section) - READ_KEYS - set(IGNORED_KEYS)):
        if where + key not in _logged_unknown:
            _logged_unknown.add(where + key)
            log.warning("config.json: unknown key %s%s ignored", where, key)


def _int(text: dict[str, Any], key: str, default: int | None = None) -> int:
    value = text.get(key, default)
    if value is None and default is not None:
        value = default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"config.json: {key} must be a non-negative integer, got {value!r}")
    return value


def _number(text: dict[str, Any], key: str, default: float) -> float:
    value = text.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"config.json: {key} must be a number, got {value!r}")
    return float(value)


def _rope(text: dict[str, Any]) -> tuple[float, float]:
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"config.json: rope type {rope_type!r} is not supported (only 'default')")
    values = {}
    for key, default in (("rope_theta", 10000.0), ("partial_rotary_factor", 0.25)):
        values[key] = _number(rope if key in rope else text, key, default)
    for key in set(rope) - _ROPE_IGNORED - {"rope_theta", "partial_rotary_factor", "type"}:
        raise ConfigError(f"config.json: rope parameter {key!r} is not supported")
    return values["rope_theta"], values["partial_rotary_factor"]


def _layer_types(text: dict[str, Any], num_layers: int) -> tuple[str, ...]:
    layer_types = text.get("layer_types")
    if layer_types is None:
        interval = _int(text, "full_attention_interval", 4)
        if interval < 1:
            raise ConfigError("config.json: full_attention_interval must be >= 1")
        layer_types = [
            "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(num_layers)
        ]
    layer_types = tuple(layer_types)
    if len(layer_types) != num_layers:
        raise ConfigError(f"config.json: layer_types has {len(layer_types)} entries for {num_layers} layers")
    unknown = sorted(set(layer_types) - set(LAYER_KINDS))
    if unknown:
        raise ConfigError(f"config.json: unknown layer types {unknown}; expected {LAYER_KINDS}")
    return layer_types


def _parse_text(text: dict[str, Any], model_type: str, text_model_type: str, prefix: str) -> TextConfig:
    for key in ("num_hidden_layers", "num_attention_heads", "hidden_size", "vocab_size"):
        if key not in text:
            raise ConfigError(f"config.json ({model_type}) lacks required field {key!r}")
    if text.get("attn_output_gate", True) is not True:
        raise ConfigError("config.json: attn_output_gate false is not supported (the gate is always on)")
    if text.get("mtp_use_dedicated_embeddings"):
        raise ConfigError("config.json: mtp_use_dedicated_embeddings is not supported")
    num_layers = _int(text, "num_hidden_layers")
    num_heads = _int(text, "num_attention_heads")
    hidden = _int(text, "hidden_size")
    if num_heads == 0:
        raise ConfigError("config.json: num_attention_heads must be positive")
    is_moe = text_model_type != "qwen3_5_text"
    is_next = text_model_type == "qwen3_next"
    eos = text.get("eos_token_id")
    eos_ids = () if eos is None else tuple(eos) if isinstance(eos, list | tuple) else (int(eos),)
    rope_theta, partial_rotary = _rope(text)
    model_dtype = canonical_dtype(text.get("dtype") or text.get("torch_dtype"))
    if model_dtype not in MODEL_DTYPES:
        raise ConfigError(f"config.json: model dtype {model_dtype!r} is not supported; use {MODEL_DTYPES}")
    return TextConfig(
        model_type=model_type,
        text_model_type=text_model_type,
        vocab_size=_int(text, "vocab_size"),
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        layer_types=_layer_types(text, num_layers),
        num_attention_heads=num_heads,
        num_key_value_heads=_int(text, "num_key_value_heads", num_heads),
        head_dim=_int(text, "head_dim", hidden // num_heads) or hidden // num_heads,
        partial_rotary_factor=partial_rotary,
        rope_theta=rope_theta,
        attention_bias=bool(text.get("attention_bias", False)),
        linear_num_key_heads=_int(text, "linear_num_key_heads", 16),
        linear_num_value_heads=_int(text, "linear_num_value_heads", 32),
        linear_key_head_dim=_int(text, "linear_key_head_dim", 128),
        linear_value_head_dim=_int(text, "linear_value_head_dim", 128),
        linear_conv_kernel_dim=_int(text, "linear_conv_kernel_dim", 4),
        hidden_act=str(text.get("hidden_act", "silu")),
        intermediate_size=_int(text, "intermediate_size", 0),
        num_experts=_int(text, "num_experts", 0) if is_moe else 0,
        num_experts_per_tok=_int(text, "num_experts_per_tok", 0) if is_moe else 0,
        moe_intermediate_size=_int(text, "moe_intermediate_size", 0) if is_moe else 0,
        shared_expert_intermediate_size=_int(text, "shared_expert_intermediate_size", 0),
        # Qwen3.5-MoE's router always renormalises the top-k weights.
        norm_topk_prob=True
        if text_model_type == "qwen3_5_moe_text"
        else bool(text.get("norm_topk_prob", True)),
        decoder_sparse_step=max(_int(text, "decoder_sparse_step", 1), 1) if is_next else 1,
        mlp_only_layers=tuple(text.get("mlp_only_layers") or ()) if is_next else (),
        rms_norm_eps=_number(text, "rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
        dtype_name=model_dtype,
        mamba_ssm_dtype_name=canonical_dtype(text.get("mamba_ssm_dtype")),
        mtp_num_hidden_layers=_int(text, "mtp_num_hidden_layers", 1 if is_next else 0),
        max_position_embeddings=_int(text, "max_position_embeddings", 32768),
        eos_token_id=eos_ids,
        pad_token_id=text.get("pad_token_id"),
        weight_prefix=prefix,
        quantization=parse_quantization(text.get("quantization_config")),
    )
