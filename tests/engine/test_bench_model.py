"""The benchmark model (engine/training/bench_model.py) on a tiny budget: it is built once into the
user's cache folder as an HF-layout checkpoint of its shape (8 layers at 3:1 DeltaNet:attention,
16 experts top-4) with an MTP head distilled on corpus text and then on the model's own greedy
output, that the engine speculates with, and a second call reuses the folder instead of training
again."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.training.bench_model import BENCH_TRAIN, bench_checkpoint, bench_key
from engine.training.corpus import load_corpus
from engine.training.distill_mtp import DistillConfig
from engine.training.self_distill_data import SelfGenConfig

pytestmark = pytest.mark.timeout(300)

TINY_TRAIN = replace(BENCH_TRAIN, steps=2, warmup_steps=1, batch_size=2, seq_len=32, vocab_size=512)
TINY_DISTILL = (
    DistillConfig(steps=1, batch_size=2, seq_len=32),
    DistillConfig(
        steps=1, batch_size=2, self_generated=SelfGenConfig(prompts=2, prompt_tokens=8, new_tokens=8)
    ),
)


def test_bench_model_is_built_once_into_the_cache_and_speculates(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    logs: list[str] = []
    path = bench_checkpoint(TINY_TRAIN, TINY_DISTILL, log=logs.append, progress=False)

    assert path.parent == tmp_path / "baton" / "trained"
    assert path.name == bench_key(TINY_TRAIN, TINY_DISTILL, load_corpus())
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no staging folder left behind
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 8 and cfg["hidden_size"] == 64
    assert cfg["layer_types"] == ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + [
        "full_attention"
    ]
    assert (cfg["num_experts"], cfg["num_experts_per_tok"], cfg["mtp_num_hidden_layers"]) == (16, 4, 1)
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    assert any(name.startswith("mtp.") for name in index)
    training = json.loads((path / "training.json").read_text())
    assert training["train_config"]["steps"] == 2 and len(training["mtp_distill"]) == 2
    assert training["mtp_distill"][1]["self_generated"]["prompts"] == 2  # the on-policy pass ran

    engine = LLMEngine(path, EngineConfig(enable_prefix_cache=False, num_speculative_tokens=2))
    assert engine.spec is not None
    engine.add_request("r", [5, 6, 7, 8], SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    out = []
    while engine.has_unfinished_requests():
        out += [t for o in engine.step() for t in o.new_token_ids]
    assert len(out) == 6

    stamp = (path / "model.safetensors.index.json").stat().st_mtime_ns
    logs.clear()
    assert bench_checkpoint(TINY_TRAIN, TINY_DISTILL, log=logs.append, progress=False) == path
    assert (path / "model.safetensors.index.json").stat().st_mtime_ns == stamp
    assert any("using the cached benchmark model" in line for line in logs)
    assert bench_key(replace(TINY_TRAIN, steps=3), TINY_DISTILL, load_corpus()) != path.name
    assert bench_key(TINY_TRAIN, TINY_DISTILL[:1], load_corpus()) != path.name
