"""The torch-free config parse on the published configs: every key read or knowingly ignored, MTP on,
and features Baton does not implement refused by name."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from engine import hf_config
from engine.hf_config import ConfigError, parse_config
from engine.model_config import ModelConfig

CONFIGS = Path(__file__).resolve().parents[2] / "deploy" / "configs"
PUBLISHED = ["qwen3-next-80b-a3b.json", "qwen3.5-397b-a17b.json"]


def published(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_configs_parse_with_mtp_and_every_key_accounted_for(name):
    raw = published(name)
    text = raw.get("text_config", raw)
    for section in (raw, text):
        assert set(section) <= hf_config.READ_KEYS | set(hf_config.IGNORED_KEYS)
    cfg = ModelConfig.from_json(raw)
    assert cfg.mtp_num_hidden_layers == 1  # Qwen3-Next's config has no mtp_num_hidden_layers key
    assert cfg.rope_theta == 1e7 and cfg.partial_rotary_factor == 0.25
    assert cfg.num_attention_layers * 3 == cfg.num_linear_layers
    assert cfg.quantization is None


def test_unknown_key_is_logged_once(caplog):
    raw = {**published(PUBLISHED[0]), "some_new_field": 3}
    with caplog.at_level(logging.WARNING, logger="engine.hf_config"):
        parse_config(raw)
        parse_config(raw)
    assert [r.getMessage() for r in caplog.records].count(
        "config.json: unknown key some_new_field ignored"
    ) == 1


def test_fp8_quantization_config_parses_like_qwen_fp8_checkpoints():
    quant = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": [128, 128],
        "modules_to_not_convert": ["lm_head", "model.layers.0.mlp.gate"],
    }
    cfg = parse_config({**published(PUBLISHED[0]), "quantization_config": quant})
    assert cfg.quantization.weight_block_size == (128, 128)
    assert cfg.quantization.modules_to_not_convert == ("lm_head", "model.layers.0.mlp.gate")
    # The wrapper's top-level quantization_config applies to its text model.
    wrapped = parse_config({**published(PUBLISHED[1]), "quantization_config": quant})
    assert wrapped.quantization.method == "fp8"


@pytest.mark.parametrize(
    ("quant", "named"),
    [
        ({"quant_method": "awq", "bits": 4}, "'awq'"),
        ({"quant_method": "gptq"}, "'gptq'"),
        ({"quant_method": "fp8"}, "weight_block_size"),
        ({"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "static"}, "'static'"),
    ],
)
def test_unsupported_quantization_is_refused_by_name(quant, named):
    with pytest.raises(ConfigError, match=named):
        parse_config({**published(PUBLISHED[0]), "quantization_config": quant})


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
        ({"attn_output_gate": False}, "attn_output_gate"),
        ({"hidden_size": "x"}, "hidden_size"),
        ({"model_type": "llama"}, "llama"),
    ],
)
def test_unsupported_features_are_refused_by_name(change, named):
    with pytest.raises(ConfigError, match=named):
        parse_config({**published(PUBLISHED[0]), **change})
