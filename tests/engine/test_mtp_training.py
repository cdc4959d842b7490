"""`baton make-model --train-mtp` (a very short run): only the MTP head changes, its held-out loss
falls, the checkpoint is rewritten consistently (index -> the new shard, no stale mtp.* copies)
and still loads, with speculation on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from engine.loader import load_model
from engine.mtp_training import MTP_SHARD, MtpTrainConfig, train_mtp
from tests.engine.spec_helpers import engine, prompt, run

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

SHORT = MtpTrainConfig(
    num_sequences=2,
    random_sequences=6,
    prompt_tokens=4,
    generated_tokens=12,
    steps=12,
    batch_sequences=4,
    lr=5e-3,
)


def test_make_model_train_mtp(tmp_path: Path) -> None:
    from baton.commands import make_model as command

    out = tmp_path / "ckpt"
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(
        ["make-model", "--preset", "tiny", "--out", str(out), "--model-type", "qwen3_5_moe_text", "--seed", "3"]
    )
    assert command.run(args) == 0
    _, before = load_model(out)
    result = train_mtp(out, SHORT, log=lambda _: None)
    assert result.loss_after < result.loss_before
    _, after = load_model(out)
    changed = [
        k for k in before.extra_weights if not torch.equal(before.extra_weights[k], after.extra_weights[k])
    ]
    assert "mtp.fc.weight" in changed and set(after.extra_weights) == set(before.extra_weights)
    for name in ("embed_tokens", "lm_head"):
        assert torch.equal(getattr(before, name), getattr(after, name))
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert {f for k, f in weight_map.items() if k.startswith("mtp.")} == {MTP_SHARD}
    for shard in set(weight_map.values()) - {MTP_SHARD}:
        with safe_open(str(out / shard), framework="pt") as f:
            assert not [k for k in f.keys() if k.startswith("mtp.")]
    prompts = {"a": prompt(20, seed=5)}
    assert run(engine(out, k=2), prompts) == run(engine(out), prompts)
