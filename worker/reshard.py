"""Resharding KV pages and DeltaNet state between TP degrees, on arrival at the decode worker.

A rank's cache holds a slice of each region's sharded dim: the kv heads of a page
(`kv [layer, page, 2, block, heads, head_dim]`), the conv channels, which are the rank's
[q | k | v] slices (`conv [layer, slot, channels, kernel - 1]`), and the value heads of the
recurrent state (`ssm [layer, slot, v_heads, k_dim, v_dim]`). `cache_indices` names the global
indices rank r holds, derived from the weight sharding itself (`engine/parallel/shard.py`), so the
cache and the weights cannot disagree.

A destination rank receives the units of each source rank it needs whole, in the sender's layout:
straight into its cache when the sender's slice is exactly its own (`Piece.direct`), else into
staging, from which `copy_out` takes the indices it owns. Prefill TP=1 to decode TP=2 splits heads
this way; TP=2 to TP=1 merges them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.model_config import ModelConfig
from engine.parallel.config import ParallelConfig
from engine.parallel.shard import shard_tensor

SHARDED_DIM = {"kv": 4, "conv": 2, "ssm": 2}  # the dim of each region tensor that splits by rank


def cache_indices(cfg: ModelConfig, tp: int, rank: int) -> dict[str, list[int]]:
    """The global kv heads, conv channels and value heads rank `rank` of `tp` holds, in its order."""
    if not 0 <= rank < tp:
        raise ValueError(f"rank {rank} out of range for tp={tp}")
    parallel = ParallelConfig(tp, 1)
    heads = torch.arange(cfg.num_key_value_heads).repeat_interleave(cfg.head_dim)[:, None]
    kv = shard_tensor(cfg, "layers.0.self_attn.k_proj.weight", heads, parallel, rank)[:: cfg.head_dim, 0]
    conv = shard_tensor(cfg, "layers.0.linear_attn.conv1d.weight", torch.arange(cfg.conv_dim)[:, None], parallel, rank)
    ssm = shard_tensor(cfg, "layers.0.linear_attn.A_log", torch.arange(cfg.linear_num_value_heads), parallel, rank)
    return {"kv": kv.tolist(), "conv": conv[:, 0].tolist(), "ssm": ssm.tolist()}


@dataclass(frozen=True, slots=True)
class Piece:
    """What a destination rank takes from one source rank: per region, runs of
    (source index, destination index, count) along the sharded dim."""

    src_rank: int
    runs: dict[str, tuple[tuple[int, int, int], ...]]
    direct: bool  # the source holds exactly this rank's slice, in order: no staging

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(self.runs)


def plan(cfg: ModelConfig, src_tp: int, dst_tp: int, dst_rank: int, regions: tuple[str, ...]) -> list[Piece]:
    """The source ranks destination rank `dst_rank` receives from (the first holder of each index)."""
    want = cache_indices(cfg, dst_tp, dst_rank)
    covered: dict[str, set[int]] = {region: set() for region in regions}
    pieces = []
    for src in range(src_tp):
        have = cache_indices(cfg, src_tp, src)
        if all(have[region] == want[region] for region in regions):
            return [Piece(src, {r: ((0, 0, len(want[r])),) for r in regions}, direct=True)]
        runs = {}
        for region in regions:
            where = {index: at for at, index in enumerate(have[region])}
            pairs = [(where[g], j) for j, g in enumerate(want[region]) if g in where and j not in covered[region]]
            covered[region].update(j for _, j in pairs)
            if pairs:
                runs[region] = _runs(pairs)
        if runs:
            pieces.append(Piece(src, runs, direct=False))
    missing = {r: len(want[r]) - len(covered[r]) for r in regions if len(covered[r]) != len(want[r])}
    if missing:
        raise ValueError(f"no source rank of tp={src_tp} holds what rank {dst_rank} of tp={dst_tp} needs: {missing}")
    return pieces


def _runs(pairs: list[tuple[int, int]]) -> tuple[tuple[int, int, int], ...]:
    """[(src, dst)] -> maximal runs consecutive on both sides."""
    out: list[list[int]] = []
    for src, dst in sorted(pairs, key=lambda p: p[1]):
        if out and out[-1][0] + out[-1][2] == src and out[-1][1] + out[-1][2] == dst:
            out[-1][2] += 1
        else:
            out.append([src, dst, 1])
    return tuple((s, d, n) for s, d, n in out)


def staging_shape(region: str, cache_tensor: torch.Tensor, width: int, num_units: int) -> tuple[int, ...]:
    """A staging tensor for `region` in a sender's layout: the sender's `width` along the sharded dim."""
    shape = list(cache_tensor.shape)
    shape[1] = num_units
    shape[SHARDED_DIM[region]] = width
    return tuple(shape)


def copy_out(
    region: str,
    cache_tensor: torch.Tensor,
    stage_tensor: torch.Tensor,
    runs: tuple[tuple[int, int, int], ...],
    dst_units: list[int],
    stage_units: list[int],
) -> None:
    """cache[:, dst_units][..., dst run] = stage[:, stage_units][..., src run], every layer at once."""
    if not dst_units:
        return
    dim = SHARDED_DIM[region]
    device = cache_tensor.device
    dst = torch.tensor(dst_units, dtype=torch.long, device=device)
    src = torch.tensor(stage_units, dtype=torch.long, device=stage_tensor.device)
    for src_start, dst_start, count in runs:
        part = stage_tensor.narrow(dim, src_start, count).index_select(1, src)
        cache_tensor.narrow(dim, dst_start, count)[:, dst] = part.to(device)
