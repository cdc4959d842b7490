"""MTP self-distillation (engine/training/distill_mtp.py): only the head's tensors change, the
checkpoint still loads with its head, and the run is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.loader import load_model
from engine.models.mtp import PREFIX, MtpHead
from engine.training.distill_mtp import DistillConfig, distill, distill_losses, load_canonical

pytestmark = pytest.mark.timeout(300)


def tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def test_distill_changes_only_the_mtp_head(shipped_copy: Path) -> None:
    before = tensors(shipped_copy)
    runs_before = len(json.loads((shipped_copy / "training.json").read_text()).get("mtp_distill", []))
    distill(
        shipped_copy,
        DistillConfig(steps=2, batch_size=1, seq_len=32, lr=1e-2),
        progress=False,
        log=lambda _: None,
    )
    after = tensors(shipped_copy)
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(PREFIX) for k in changed)
    assert {k for k in before if k.startswith(PREFIX)} == changed  # every head tensor trained
    _, model = load_model(shipped_copy)
    assert MtpHead.from_model(model) is not None
    runs = json.loads((shipped_copy / "training.json").read_text())["mtp_distill"]
    assert len(runs) == runs_before + 1  # this run appended, earlier ones kept
    assert runs[-1]["steps"] == 2 and len(runs[-1]["history"]) == 2


def test_distill_loss_goes_down_when_the_head_trains(shipped_copy: Path) -> None:
    """Gradients reach the head through the distillation loss: descent on one batch lowers it."""
    cfg, _, weights = load_canonical(shipped_copy)
    batch = torch.randint(cfg.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    mtp = [v.requires_grad_() for k, v in weights.items() if k.startswith(PREFIX)]
    optimizer = torch.optim.SGD(mtp, lr=0.05)
    losses = []
    for _ in range(4):
        loss, _, _ = distill_losses(cfg, weights, batch, 0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
