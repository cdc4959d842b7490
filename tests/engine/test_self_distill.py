"""On-policy MTP distillation (engine/training/self_distill_data.py + distill_mtp): the data are the
main model's own greedy continuations of train-split prompts, and distilling the head on them
raises its first-draft acceptance on those sequences, measured through the engine's forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from engine.training import trainable
from engine.training.corpus import load_corpus
from engine.training.distill_mtp import DistillConfig, distill, load_canonical
from engine.training.evaluate import draft_acceptance
from engine.training.self_distill_data import SelfGenConfig, generate_sequences
from engine.training.train_model import encode

pytestmark = pytest.mark.timeout(300)

GEN = SelfGenConfig(prompts=8, prompt_tokens=16, new_tokens=48, batch=8, seed=3)


def contains(stream: list[int], window: list[int]) -> bool:
    return any(stream[i : i + len(window)] == window for i in range(len(stream) - len(window) + 1))


def test_sequences_are_train_prompts_continued_greedily(shipped_copy: Path) -> None:
    corpus = load_corpus()
    sequences = generate_sequences(shipped_copy, GEN, corpus)
    assert sequences.shape == (GEN.prompts, GEN.length)
    tokenizer = Tokenizer.from_file(str(shipped_copy / "tokenizer.json"))
    eot = tokenizer.token_to_id("<|endoftext|>")
    train = encode(tokenizer, corpus.train, eot).tolist()
    for row in sequences.tolist():  # every prompt is a window of the train split
        assert contains(train, row[: GEN.prompt_tokens])
    # the continuation is the main model's argmax, recomputed by the (fp32) training forward
    cfg, _, weights = load_canonical(shipped_copy)
    with torch.no_grad():
        greedy = F.linear(
            trainable.hidden_states(cfg, weights, sequences), trainable.lm_head(cfg, weights)
        ).argmax(-1)
    start = GEN.prompt_tokens - 1
    agree = (greedy[:, start:-1] == sequences[:, start + 1 :]).float().mean().item()
    assert agree > 0.97


def perturb_head(model_dir: Path, scale: float = 0.5, seed: int = 0) -> None:
    """The MTP head as if trained less: each `mtp.*` matrix gets noise of `scale` x its std (the
    shipped head is already distilled on-policy, so there is little left to raise)."""
    gen = torch.Generator().manual_seed(seed)
    for shard in model_dir.glob("*.safetensors"):
        tensors = load_file(shard)
        for name, t in tensors.items():
            if name.startswith("mtp.") and t.dim() > 1:
                noise = torch.randn(t.shape, generator=gen) * t.float().std() * scale
                tensors[name] = (t.float() + noise).to(t.dtype)
        save_file(tensors, shard, metadata={"format": "pt"})


def test_distilling_on_self_generated_data_raises_acceptance_on_it(shipped_copy: Path) -> None:
    perturb_head(shipped_copy)
    sequences = generate_sequences(shipped_copy, GEN, load_corpus()).tolist()
    starts = [GEN.prompt_tokens - 1] * len(sequences)
    before = draft_acceptance(shipped_copy, sequences, starts)
    config = DistillConfig(steps=30, batch_size=4, lr=3e-3, self_generated=GEN)
    distill(shipped_copy, config, progress=False, log=lambda _: None)
    after = draft_acceptance(shipped_copy, sequences, starts)
    print(f"first-draft acceptance {before:.3f} -> {after:.3f}")
    assert after > before + 0.05, (before, after)


def test_bad_generation_config_is_refused(shipped_copy: Path) -> None:
    with pytest.raises(ValueError, match="new tokens"):
        generate_sequences(shipped_copy, SelfGenConfig(prompts=2, new_tokens=1), load_corpus())
