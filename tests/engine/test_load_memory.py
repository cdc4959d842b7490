"""Loading is bounded in host memory: a subprocess loads a checkpoint of 3 shards of >= 200 MB (a wide,
shallow Qwen3-Next with per-expert tensors, written here) and its peak RSS minus (the RSS before
loading + the loaded model's bytes) stays within 0.2 x the largest shard + 64 MB."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.model_config import ModelConfig
from engine.models.checkpoint_format import expected_shapes, to_hf

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
MB = 1 << 20

CONFIG = {
    "model_type": "qwen3_next",
    "vocab_size": 4096,
    "hidden_size": 1024,
    "num_hidden_layers": 3,
    "layer_types": ["linear_attention", "full_attention", "linear_attention"],
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "linear_num_key_heads": 8,
    "linear_num_value_heads": 16,
    "linear_key_head_dim": 64,
    "linear_value_head_dim": 64,
    "num_experts": 48,
    "num_experts_per_tok": 8,
    "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512,
    "intermediate_size": 2048,
    "mtp_num_hidden_layers": 0,
    "dtype": "float32",
}

MEASURE = """
import json, sys, torch
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
from engine.loader import load_checkpoint
torch.ones(1) @ torch.ones(1)  # warm torch's allocator and kernels outside the measurement
baseline = status("VmRSS:")
loaded = load_checkpoint(sys.argv[1])
peak = status("VmHWM:")
def storages(obj, seen, out, depth=0):
    if isinstance(obj, torch.Tensor):
        out[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
    elif depth < 6 and id(obj) not in seen:
        seen.add(id(obj))
        items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else (
            vars(obj).values() if hasattr(obj, "__dict__") else ())
        for item in items:
            storages(item, seen, out, depth + 1)
tensors = {}
storages(loaded.model, set(), tensors)
print(json.dumps({"baseline": baseline, "peak": peak, "model_bytes": sum(tensors.values()),
                  "identity": loaded.identity}))
"""


def write_checkpoint(out: Path) -> list[int]:
    """Three shards, one per decoder layer (embeddings, norms and lm_head with layer 0)."""
    out.mkdir()
    (out / "config.json").write_text(json.dumps(CONFIG))
    cfg = ModelConfig.from_json(CONFIG)
    gen = torch.Generator().manual_seed(0)
    shapes = expected_shapes(cfg)
    weight_map, sizes = {}, []
    for layer in range(cfg.num_hidden_layers):
        names = [
            n
            for n in shapes
            if n.startswith(f"layers.{layer}.") or (layer == 0 and not n.startswith("layers."))
        ]
        canonical = {n: torch.randn(shapes[n], generator=gen) * 0.02 for n in names}
        tensors = to_hf(cfg, canonical)
        del canonical
        file_name = f"model-{layer + 1:05d}-of-00003.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / file_name))
        weight_map.update(dict.fromkeys(tensors, file_name))
        sizes.append((out / file_name).stat().st_size)
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return sizes


def test_peak_rss_is_the_model_plus_one_tensor(tmp_path: Path) -> None:
    model_dir = tmp_path / "wide"
    sizes = write_checkpoint(model_dir)
    assert len(sizes) >= 3 and min(sizes) >= 200 * MB, sizes
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(model_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=500,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    extra = figures["peak"] - figures["baseline"] - figures["model_bytes"]
    bound = 0.2 * max(sizes) + 64 * MB
    print(
        f"shards {[round(s / MB) for s in sizes]} MB; baseline {figures['baseline'] / MB:.0f} MB, "
        f"model {figures['model_bytes'] / MB:.0f} MB, peak {figures['peak'] / MB:.0f} MB; "
        f"peak - (baseline + model) = {extra / MB:.0f} MB <= bound {bound / MB:.0f} MB"
    )
    assert figures["model_bytes"] >= 0.95 * sum(sizes)  # the whole model was measured
    assert extra <= bound
