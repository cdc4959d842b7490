"""A rank's slice of the canonical weights (names as in `engine/models/checkpoint_format`).

Heads and channels split contiguously, so rank r's q heads use exactly rank r's kv heads (GQA)
and rank r's DeltaNet value heads use rank r's key heads. When there are fewer kv heads than
ranks, each rank keeps the one kv head its q heads read (replicated). Column-parallel weights
([out, in]) keep rank r's rows, row-parallel ones rank r's columns; biases of row-parallel
projections stay on rank 0 only, so the all-reduce adds them once. Experts split by expert id
under ep, else by intermediate channel under tp. Norm weights (per head dim) are replicated.
"""

from __future__ import annotations

import torch

from engine.model_config import ModelConfig
from engine.parallel.config import ParallelConfig


def shard_weights(
    cfg: ModelConfig, weights: dict[str, torch.Tensor], parallel: ParallelConfig, rank: int
) -> dict[str, torch.Tensor]:
    """Rank `rank`'s tensors of the full canonical `weights` (consumed: entries are replaced)."""
    if parallel.world_size == 1:
        return weights
    parallel.check_model(cfg)
    out = {}
    for name in list(weights):
        out[name] = shard_tensor(cfg, name, weights.pop(name), parallel, rank).contiguous()
    return out


def local_shapes(
    cfg: ModelConfig, shapes: dict[str, tuple[int, ...]], parallel: ParallelConfig, rank: int
) -> dict[str, tuple[int, ...]]:
    """The shapes of rank `rank`'s tensors (what the loader preallocates and checks)."""
    return {
        name: tuple(shard_tensor(cfg, name, torch.empty(shape, device="meta"), parallel, rank).shape)
        for name, shape in shapes.items()
    }


def shard_expert_piece(
    cfg: ModelConfig, name: str, index: tuple, w: torch.Tensor, p: ParallelConfig, rank: int
) -> tuple[tuple, torch.Tensor] | None:
    """One expert's `gate_proj` / `up_proj` ([I, H] at rows `index[1]` of `experts.gate_up_proj`) or
    `down_proj` ([H, I]) as it arrives: (its index in the rank's stacked tensor, its slice), or None
    when the expert lives on another rank."""
    expert = index[0]
    if p.ep > 1:
        per = cfg.num_experts // p.ep
        if not rank * per <= expert < (rank + 1) * per:
            return None
        return (expert - rank * per, *index[1:]), w
    if p.tp == 1:
        return index, w
    if name.endswith("down_proj"):
        return index, _part(w, 1, p.tp, rank)
    rows = index[1]
    local = w.shape[0] // p.tp
    start = 0 if rows.start == 0 else local
    return (expert, slice(start, start + local)), _part(w, 0, p.tp, rank)


def shard_tensor(cfg: ModelConfig, name: str, w: torch.Tensor, p: ParallelConfig, rank: int) -> torch.Tensor:
    """Rank `rank`'s slice of one whole canonical tensor."""
    tp = p.tp
    if name in ("embed_tokens.weight", "lm_head.weight"):
        return vocab_rows(w, tp, rank) if tp > 1 else w  # ep alone: every rank has the whole vocab
    if ".mlp.experts." in name:
        return _shard_experts(name, w, p, rank)
    if tp == 1:
        return w
    if ".self_attn." in name:
        return _shard_attention(cfg, name, w, tp, rank)
    if ".linear_attn." in name:
        return _shard_deltanet(cfg, name, w, tp, rank)
    if name.endswith(("gate_proj.weight", "up_proj.weight")):
        return _part(w, 0, tp, rank)
    if name.endswith("down_proj.weight"):
        return _part(w, 1, tp, rank)
    return w  # norms, router gate, shared expert gate: replicated


def vocab_rows(w: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    """Rank r's ceil(V / tp) vocab rows, zero-padded at the end of the last rank."""
    per = -(-w.shape[0] // tp)
    rows = w[rank * per : (rank + 1) * per]
    if rows.shape[0] < per:
        rows = torch.cat([rows, rows.new_zeros(per - rows.shape[0], *rows.shape[1:])])
    return rows


def _part(w: torch.Tensor, dim: int, parts: int, index: int) -> torch.Tensor:
    size = w.shape[dim] // parts
    return w.narrow(dim, index * size, size)


def _shard_attention(cfg: ModelConfig, name: str, w: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    kv = cfg.num_key_value_heads
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return _part(w, 0, tp, rank)  # per head [query | gate] rows: contiguous per head
    if name.endswith(("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias")):
        if kv >= tp:
            return _part(w, 0, tp, rank)
        return _part(w, 0, kv, rank * kv // tp)  # the one kv head rank r's q heads read
    if name.endswith("o_proj.weight"):
        return _part(w, 1, tp, rank)
    if name.endswith("o_proj.bias"):
        return w if rank == 0 else torch.zeros_like(w)
    return w  # q_norm, k_norm


def _shard_deltanet(cfg: ModelConfig, name: str, w: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    if name.endswith(("in_proj_qkv.weight", "conv1d.weight")):
        kd, vd = cfg.linear_key_dim, cfg.linear_value_dim
        q, k, v = torch.split(w, [kd, kd, vd], dim=0)
        return torch.cat([_part(q, 0, tp, rank), _part(k, 0, tp, rank), _part(v, 0, tp, rank)])
    if name.endswith(("in_proj_z.weight", "in_proj_b.weight", "in_proj_a.weight", "A_log", "dt_bias")):
        return _part(w, 0, tp, rank)
    if name.endswith("out_proj.weight"):
        return _part(w, 1, tp, rank)
    return w  # norm.weight [Dv]


def _shard_experts(name: str, w: torch.Tensor, p: ParallelConfig, rank: int) -> torch.Tensor:
    if p.ep > 1:
        return _part(w, 0, p.ep, rank)  # whole experts
    if p.tp == 1:
        return w
    if name.endswith("gate_up_proj"):  # [E, 2I, H], gate rows first
        gate, up = torch.chunk(w, 2, dim=1)
        return torch.cat([_part(gate, 1, p.tp, rank), _part(up, 1, p.tp, rank)], dim=1)
    return _part(w, 2, p.tp, rank)  # down_proj [E, H, I]
