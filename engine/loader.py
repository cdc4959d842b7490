"""Load a Hugging Face checkpoint of the hybrid families into a `HybridModel`.

Reads `config.json`, then the safetensors shards listed in `model.safetensors.index.json` (or a
single `model.safetensors`) through `safe_open`, which memory-maps the files: tensors are read one
at a time and only copied when a dtype/device change or a layout fix (fused Qwen3-Next projections,
per-expert MoE weights) needs it. Every expected tensor must be present with its exact shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from engine.model_config import ModelConfig
from engine.models.checkpoint_format import canonicalize, expected_shapes
from engine.models.hybrid import HybridModel

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that does not match its config: missing or misshapen tensors, missing files."""


def load_model(
    model_dir: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu"
) -> tuple[ModelConfig, HybridModel]:
    """(config, model) with weights in `dtype` (default: the config's dtype) on `device`."""
    from engine.model_config import parse_dtype

    model_dir = Path(model_dir)
    cfg = ModelConfig.from_json(model_dir)
    target_dtype = parse_dtype(dtype, cfg.dtype)
    raw, extra = _read_tensors(model_dir, cfg)
    try:
        canonical = canonicalize(cfg, raw)
    except KeyError as exc:
        raise CheckpointError(
            f"{model_dir}: checkpoint lacks tensor {cfg.weight_prefix}{exc.args[0]}"
        ) from None
    _check_shapes(model_dir, cfg, canonical)
    weights = {name: _place(canonical[name], name, target_dtype, device) for name in expected_shapes(cfg)}
    extra = {name: t.to(device=device, dtype=target_dtype) for name, t in extra.items()}
    return cfg, HybridModel(cfg, weights, extra)


def _shard_files(model_dir: Path) -> dict[str, list[str]]:
    """File name → tensor names in it (None = all)."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        files: dict[str, list[str]] = {}
        for name, file_name in weight_map.items():
            files.setdefault(file_name, []).append(name)
        return files
    if (model_dir / SINGLE_FILE).is_file():
        return {SINGLE_FILE: []}
    raise CheckpointError(f"{model_dir}: no {INDEX_FILE} or {SINGLE_FILE}")


def _read_tensors(
    model_dir: Path, cfg: ModelConfig
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Text-model tensors (prefix stripped, lm_head kept) and extras (`mtp.*`); vision etc. skipped."""
    prefix = cfg.weight_prefix
    text: dict[str, torch.Tensor] = {}
    extra: dict[str, torch.Tensor] = {}
    for file_name, names in _shard_files(model_dir).items():
        path = model_dir / file_name
        if not path.is_file():
            raise CheckpointError(f"{model_dir}: shard {file_name} listed in the index is missing")
        with safe_open(str(path), framework="pt") as f:
            for name in names or list(f.keys()):
                if name.startswith(prefix):
                    text[name[len(prefix) :]] = f.get_tensor(name)
                elif name == "lm_head.weight":
                    text[name] = f.get_tensor(name)
                elif name.startswith("mtp."):
                    extra[name] = f.get_tensor(name)
    return text, extra


def _check_shapes(model_dir: Path, cfg: ModelConfig, canonical: dict[str, torch.Tensor]) -> None:
    for name, shape in expected_shapes(cfg).items():
        if name not in canonical:
            hf_name = name if name == "lm_head.weight" else cfg.weight_prefix + name
            raise CheckpointError(f"{model_dir}: checkpoint lacks tensor {hf_name}")
        actual = tuple(canonical[name].shape)
        if actual != shape:
            raise CheckpointError(
                f"{model_dir}: tensor {cfg.weight_prefix + name} has shape {actual}, config implies {shape}"
            )


def _place(tensor: torch.Tensor, name: str, dtype: torch.dtype, device: str | torch.device) -> torch.Tensor:
    # A_log / dt_bias feed fp32 math; keep everything else in the model dtype.
    return tensor.to(device=device, dtype=dtype).contiguous()
