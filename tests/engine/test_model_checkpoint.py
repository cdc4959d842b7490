"""`baton make-model` writes a checkpoint that both Baton and transformers load, with a tokenizer
that tokenizes identically in both and a Qwen chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from baton.cli import main as baton_main
from engine.cache.tensors import CacheTensors
from engine.loader import load_model
from engine.model_runner import ModelRunner, SeqChunk
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(120)
transformers = pytest.importorskip("transformers")
TEXT = "Hello wörld, 123 déjà vu!\n  def f(x):\n\treturn x + 1<|im_end|>"


@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5_moe_text"])
def test_cli_writes_loadable_checkpoint(tmp_path: Path, model_type: str) -> None:
    out = tmp_path / "ckpt"
    assert baton_main(["make-model", "--preset", "tiny", "--out", str(out), "--model-type", model_type]) == 0
    for name in ("config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in out.glob("*.safetensors")}
    transformers.logging.set_verbosity_error()
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched tensors
    cfg, _ = load_model(out)
    assert cfg.model_type == model_type == model.config.model_type


@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5_text"])
def test_tokenizer_matches_transformers(model_type: str) -> None:
    path = tiny_checkpoint(model_type)
    ours = Tokenizer.from_file(str(path / "tokenizer.json"))
    theirs = transformers.AutoTokenizer.from_pretrained(path)
    assert theirs(TEXT)["input_ids"] == ours.encode(TEXT).ids
    assert ours.encode("<|im_start|>").ids == [ours.token_to_id("<|im_start|>")]
    assert theirs.eos_token == "<|im_end|>" and theirs.pad_token == "<|endoftext|>"
    chat = theirs.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    cfg = json.loads((path / "config.json").read_text())
    assert ours.token_to_id("<|im_end|>") in cfg["eos_token_id"]
    assert ours.get_vocab_size() <= cfg["vocab_size"]


@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5_text", "qwen3_5_moe_text"])
def test_greedy_output_is_not_degenerate(model_type: str) -> None:
    cfg, model = load_model(tiny_checkpoint(model_type))
    runner = ModelRunner(model, CacheTensors.allocate(cfg, num_pages=8, num_slots=1, block_size=16))
    ids = [5, 6, 7, 8, 9]
    logits = runner.forward([SeqChunk(ids, 0, list(range(8)), 0)])
    generated = []
    for _ in range(30):
        token = int(logits[0].argmax())
        generated.append(token)
        logits = runner.forward([SeqChunk([token], len(ids), list(range(8)), 0)])
        ids.append(token)
    assert len(set(generated)) >= 10, generated
    assert torch.isfinite(logits).all()
