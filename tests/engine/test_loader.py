"""Checkpoint loading: config parsing variants, sharded/single-file/wrapper layouts, bf16, errors."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.cache.tensors import CacheTensors
from engine.loader import CheckpointError, load_checkpoint, load_model
from engine.model_config import ModelConfig
from engine.model_runner import ModelRunner, SeqChunk
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(120)


def all_tensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def as_single_file(
    src: Path, dst: Path, tensors: dict[str, torch.Tensor], config: dict | None = None
) -> Path:
    dst.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / "model.safetensors"))
    raw = config if config is not None else json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(raw))
    return dst


def logits_of(path: Path, dtype=None) -> torch.Tensor:
    cfg, model = load_model(path, dtype=dtype)
    runner = ModelRunner(model, CacheTensors.allocate(cfg, num_pages=4, num_slots=1, block_size=16))
    return runner.forward([SeqChunk(list(range(1, 30)), 0, [0, 1], 0)], all_logits=True)


def test_single_file_equals_sharded(tmp_path: Path) -> None:
    src = tiny_checkpoint("qwen3_next")
    assert len(list(src.glob("*.safetensors"))) > 1
    single = as_single_file(src, tmp_path / "single", all_tensors(src))
    # Same values; BLAS may pick other kernels for differently aligned buffers (~1e-7 apart).
    torch.testing.assert_close(logits_of(single), logits_of(src), atol=1e-5, rtol=0)


def test_wrapper_type_with_language_model_prefix(tmp_path: Path) -> None:
    """A `qwen3_5_moe` (multimodal wrapper) checkpoint: text_config + `model.language_model.*`, plus
    vision and MTP tensors that the text runtime skips / keeps aside."""
    src = tiny_checkpoint("qwen3_5_moe_text")
    text_cfg = json.loads((src / "config.json").read_text())
    wrapper = {"model_type": "qwen3_5_moe", "text_config": text_cfg, "tie_word_embeddings": False}
    tensors = {
        (k if k == "lm_head.weight" or k.startswith("mtp.") else "model.language_model." + k.removeprefix("model.")): v
        for k, v in all_tensors(src).items()
    }
    tensors["model.visual.patch_embed.weight"] = torch.zeros(4, 4)
    path = as_single_file(src, tmp_path / "wrapped", tensors, wrapper)
    cfg, model = load_model(path)
    assert cfg.model_type == "qwen3_5_moe" and cfg.text_model_type == "qwen3_5_moe_text"
    assert torch.equal(model.extra_weights["mtp.fc.weight"], tensors["mtp.fc.weight"])
    torch.testing.assert_close(logits_of(path), logits_of(src), atol=1e-5, rtol=0)


def test_tied_embeddings_share_the_tensor() -> None:
    cfg, model = load_model(tiny_checkpoint("qwen3_5_text"))
    assert cfg.tie_word_embeddings and model.lm_head is model.embed_tokens


def test_bf16_load_is_close_to_fp32() -> None:
    path = tiny_checkpoint("qwen3_next")
    cfg, model = load_model(path, dtype=torch.bfloat16)
    assert model.embed_tokens.dtype == torch.bfloat16
    low, high = logits_of(path, torch.bfloat16), logits_of(path)
    assert low.dtype == torch.float32
    # bf16 has ~3 significant digits; the top choices must still mostly agree.
    agree = (low.argmax(-1) == high.argmax(-1)).float().mean().item()
    assert agree >= 0.8 and (low - high).abs().max().item() < 1.0


def test_unknown_model_type_is_named() -> None:
    with pytest.raises(ValueError, match="'llama'"):
        ModelConfig.from_json({"model_type": "llama", "hidden_size": 8})


def test_rope_fields_accepted_at_top_level() -> None:
    raw = json.loads((tiny_checkpoint("qwen3_next") / "config.json").read_text())
    raw.pop("rope_parameters")
    raw.update(rope_theta=5e6, partial_rotary_factor=0.5, full_attention_interval=3)
    raw.pop("layer_types")
    cfg = ModelConfig.from_json(raw)
    assert (cfg.rope_theta, cfg.partial_rotary_factor) == (5e6, 0.5)
    assert cfg.layer_types[:3] == ("linear_attention", "linear_attention", "full_attention")
    assert cfg.attention_layer_ids == [2, 5] and cfg.num_linear_layers == 4


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    src = tiny_checkpoint("qwen3_5_text")
    tensors = all_tensors(src)
    del tensors["model.layers.2.self_attn.k_norm.weight"]
    path = as_single_file(src, tmp_path / "missing", tensors)
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\.self_attn\.k_norm\.weight"):
        load_model(path)


def test_missing_expert_is_named(tmp_path: Path) -> None:
    src = tiny_checkpoint("qwen3_next")
    tensors = all_tensors(src)
    del tensors["model.layers.0.mlp.experts.3.up_proj.weight"]
    path = as_single_file(src, tmp_path / "missing_expert", tensors)
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.experts\.3\.up_proj\.weight"):
        load_model(path)


def test_misshapen_tensor_is_named(tmp_path: Path) -> None:
    src = tiny_checkpoint("qwen3_next")
    tensors = all_tensors(src)
    tensors["model.layers.4.linear_attn.out_proj.weight"] = torch.zeros(3, 3)
    path = as_single_file(src, tmp_path / "misshapen", tensors)
    with pytest.raises(CheckpointError, match=r"model\.layers\.4\.linear_attn\.out_proj\.weight.*\(3, 3\)"):
        load_model(path)


def test_misshapen_mtp_tensor_is_named(tmp_path: Path) -> None:
    src = tiny_checkpoint("qwen3_5_moe_text")
    tensors = all_tensors(src)
    tensors["mtp.fc.weight"] = torch.ones(3, 3)
    path = as_single_file(src, tmp_path / "bad_mtp", tensors)
    with pytest.raises(CheckpointError, match=r"mtp\.fc\.weight.*\(3, 3\)"):
        load_model(path)


def test_missing_shard_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint("qwen3_next"), path)
    victim = sorted(path.glob("*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        load_model(path)


def test_load_logs_progress_and_shows_a_bar(monkeypatch, caplog, capsys) -> None:
    monkeypatch.setattr("engine.weight_placer.LOG_EVERY_BYTES", 64 * 1024)
    with caplog.at_level(logging.INFO, logger="engine.loader"):
        load_checkpoint(tiny_checkpoint("qwen3_next"), progress=True)
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")]
    assert len(progress) >= 3 and "tensors" in progress[0] and " GB" in progress[0]
    assert "loading weights" in capsys.readouterr().err  # the tqdm bar
