"""Training a small model (engine/training): the differentiable forward equals the engine's, a few
steps on a tiny config lower both losses and write a checkpoint that the engine and transformers
load to the same logits, the corpus is a sorted, split, hashed list, and the evaluation helpers
measure what they say."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.cache.tensors import CacheTensors
from engine.loader import load_model
from engine.model_runner import ModelRunner, SeqChunk
from engine.models.checkpoint_format import canonicalize, expected_shapes
from engine.models.mtp import MtpHead
from engine.training import evaluate, trainable
from engine.training.corpus import HELD_OUT_EVERY, load_corpus
from engine.training.train_model import TrainConfig, train_model
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(300)


def raw_text_tensors(path: Path, cfg) -> dict[str, torch.Tensor]:
    """The checkpoint's text-model tensors with the prefix stripped, read straight from its shards."""
    raw = {}
    for shard in sorted(path.glob("*.safetensors")):
        for name, tensor in load_file(shard).items():
            if name.startswith(cfg.weight_prefix):
                raw[name[len(cfg.weight_prefix) :]] = tensor
            elif name == "lm_head.weight":
                raw[name] = tensor
    return raw


def engine_logits(model_dir: Path, tokens: list[int]) -> torch.Tensor:
    cfg, model = load_model(model_dir)
    pages = -(-len(tokens) // 16)
    runner = ModelRunner(model, CacheTensors.allocate(cfg, pages, 1, 16, torch.float32))
    return runner.forward([SeqChunk(tokens, 0, list(range(pages)), 0)], all_logits=True)


@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5_moe_text"])
def test_trainable_forward_equals_engine_forward(model_type: str) -> None:
    path = tiny_checkpoint(model_type)
    cfg, _ = load_model(path)
    raw = raw_text_tensors(path, cfg)
    weights = {k: v.float() for k, v in canonicalize(cfg, raw).items() if k in expected_shapes(cfg)}
    tokens = torch.randint(cfg.vocab_size, (2, 70), generator=torch.Generator().manual_seed(0))
    ours = trainable.logits(cfg, weights, tokens)
    for row in range(2):
        torch.testing.assert_close(ours[row], engine_logits(path, tokens[row].tolist()), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("trained") / "ckpt"
    result = train_model(out, TrainConfig.quick(steps=40), progress=False)
    return result.path, json.loads((out / "training.json").read_text())["history"]


def test_a_few_steps_lower_the_main_and_mtp_losses(trained) -> None:
    _, history = trained
    first, last = history[:5], history[-5:]
    for key in ("main", "mtp"):
        before, after = sum(h[key] for h in first) / 5, sum(h[key] for h in last) / 5
        assert after < before - 0.3, (key, before, after)


def test_trained_checkpoint_loads_in_engine_and_transformers_alike(trained) -> None:
    transformers = pytest.importorskip("transformers")
    path, _ = trained
    record = json.loads((path / "training.json").read_text())
    assert record["corpus_sha256"] == load_corpus().sha256
    assert (path / "loss_curve.png").stat().st_size > 1000
    transformers.logging.set_verbosity_error()
    reference = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokens = list(range(5, 60))
    with torch.no_grad():
        theirs = reference(torch.tensor([tokens])).logits[0].float()
    torch.testing.assert_close(engine_logits(path, tokens), theirs, atol=1e-4, rtol=0)
    _, model = load_model(path)
    assert MtpHead.from_model(model) is not None, "the trained MTP head is in the checkpoint"


def test_corpus_is_sorted_split_and_hashed(tmp_path: Path) -> None:
    corpus = load_corpus()
    assert list(corpus.files) == sorted(corpus.files) and len(corpus.files) > 30
    assert len(corpus.held_out) == sum(1 for i in range(len(corpus.files)) if i % HELD_OUT_EVERY == 5)
    assert not set(corpus.held_out) & set(corpus.train)
    assert load_corpus().sha256 == corpus.sha256
    fake = tmp_path / "stdlib"
    (fake / "json").mkdir(parents=True)
    (fake / "json" / "a.py").write_text("x = 1\n")
    (fake / "copy.py").write_text("y = 2\n")
    one = load_corpus(fake)
    assert one.files == ("copy.py", "json/a.py")
    (fake / "copy.py").write_text("y = 3\n")
    assert load_corpus(fake).sha256 != one.sha256, "the hash follows the content"


def test_evaluation_helpers() -> None:
    assert evaluate.trim_to_lines("def f(x):\n", "    return x\n    if x") == "def f(x):\n    return x\n"
    assert evaluate.parses("    def f(self):\n        return 1\n")  # a method header, dedented
    assert not evaluate.parses("def f(x):\n")
    headers = evaluate.function_headers(("def a(x):\n  pass\nclass B:\n    def c(self) -> int:\n",), 5)
    assert headers == ["def a(x):\n", "    def c(self) -> int:\n"]
    train, held = torch.tensor([0, 0, 1]), torch.tensor([1, 0, 1])
    expected = -(math.log(3 / 5) + math.log(2 / 5)) / 2  # add-one counts: 3/5 and 2/5
    assert evaluate.unigram_loss(train, held, vocab=2) == pytest.approx(expected)
