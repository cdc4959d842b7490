"""Write tensors as a Hugging Face checkpoint: sharded `*.safetensors` + `model.safetensors.index.json`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm


def write_safetensors_shards(
    tensors: dict[str, torch.Tensor],
    out_dir: Path,
    max_shard_bytes: int,
    progress: bool = False,
) -> list[Path]:
    """Split `tensors` (in name order) into shards of at most `max_shard_bytes` (a bigger single
    tensor gets a shard of its own) and write the index. One shard is still written with an index,
    as large hub checkpoints do, so the sharded path is always exercised."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = list(_plan_shards(tensors, max_shard_bytes))
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map: dict[str, str] = {}
    total = 0
    for file_name, shard in tqdm(
        list(zip(names, shards, strict=True)), desc="writing shards", disable=not progress
    ):
        data = {name: tensors[name].contiguous() for name in shard}
        save_file(data, str(out_dir / file_name), metadata={"format": "pt"})
        for name in shard:
            weight_map[name] = file_name
            total += data[name].numel() * data[name].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return [out_dir / n for n in names]


def _plan_shards(tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> Iterable[list[str]]:
    current: list[str] = []
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if current and size + nbytes > max_shard_bytes:
            yield current
            current, size = [], 0
        current.append(name)
        size += nbytes
    if current:
        yield current


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
