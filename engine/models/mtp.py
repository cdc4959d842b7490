"""The multi-token-prediction (MTP) head of Qwen3-Next / Qwen3.5 checkpoints, as a draft model.

Checkpoint names (as vLLM's / SGLang's `qwen3_next_mtp` read them), at the top level, `mtp.`:
`fc.weight` [H, 2H], `pre_fc_norm_embedding.weight`, `pre_fc_norm_hidden.weight`, `norm.weight`
[H], and `layers.{i}.` one full-attention decoder layer each (`input_layernorm`,
`post_attention_layernorm`, `self_attn.*`, `mlp.*` — MoE where the main model's layer i would be).
The embedding and lm_head are the main model's.

Entry at position p: z = fc([norm_e(embed(x[p+1])) ; norm_h(h[p])]) with h[p] the target's
final-normed hidden state at p, then the decoder layer at rope position p (attending to the MTP
entries [valid_from, p] of the same sequence), then `norm`; logits = out @ lm_head predict x[p+2].
Drafting further steps feeds `out` back as the hidden state (one layer reused for every step).

All math runs on weights in compute layout ([in, out], experts [E, in, out]) through plain torch
ops, so the same functions serve inference and training (autograd) of the head.

Under tensor / expert parallelism (a head built `from_model` of a rank's shard) the head is split
like the main layers (`engine/parallel/shard.py`): attention heads, dense and shared MLPs and
routed experts are the rank's, the norms and `fc` are replicated, the embedding and lm head are
the model's vocab-parallel ones, and one all-reduce follows the attention and the ffn.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
import torch.nn.functional as F

from engine.model_config import ModelConfig
from engine.models.checkpoint_format import _mixer_shapes, _mlp_shapes, canonicalize
from engine.models.mtp_attention import CachedGroup, StackedCaches, cached_attention
from engine.ops.attention import chunk_causal_attention
from engine.ops.moe_autograd import MoeWeights, sparse_moe, swiglu
from engine.ops.moe_block import FusedMoeWeights, fused_moe_block
from engine.ops.norms import rms_norm_zero_centered
from engine.ops.rope import RopeTable, apply_rope, rope_cos_sin
from engine.parallel.comm import SINGLE
from engine.parallel.config import ParallelConfig

PREFIX = "mtp."


class MtpCheckpointError(ValueError):
    """MTP tensors present but incomplete or misshapen."""


def mtp_expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical MTP tensors (without the `mtp.` prefix) and their shapes."""
    h = cfg.hidden_size
    shapes: dict[str, tuple[int, ...]] = {
        "fc.weight": (h, 2 * h),
        "pre_fc_norm_embedding.weight": (h,),
        "pre_fc_norm_hidden.weight": (h,),
        "norm.weight": (h,),
    }
    for i in range(cfg.mtp_num_hidden_layers):
        p = f"layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes.update({p + k: v for k, v in _mixer_shapes(cfg, "full_attention").items()})
        shapes.update({p + k: v for k, v in _mlp_shapes(cfg, i).items()})
    return shapes


def mtp_canonical(
    cfg: ModelConfig, extra: dict[str, torch.Tensor], check_shapes: bool = True
) -> dict[str, torch.Tensor] | None:
    """`mtp.*` checkpoint tensors → canonical MTP tensors, or None when the checkpoint has none
    (or the config declares no MTP layers). Raises MtpCheckpointError on missing/misshapen ones
    (`check_shapes=False`: a rank's shard, whose shapes the loader checked against the shard's)."""
    raw = {k[len(PREFIX) :]: v for k, v in extra.items() if k.startswith(PREFIX)}
    if cfg.mtp_num_hidden_layers < 1 or not raw:
        return None
    try:
        canonical = canonicalize(cfg, raw)
    except KeyError as exc:
        raise MtpCheckpointError(f"checkpoint lacks MTP tensor {PREFIX}{exc.args[0]}") from None
    for name, shape in mtp_expected_shapes(cfg).items():
        if name not in canonical:
            raise MtpCheckpointError(f"checkpoint lacks MTP tensor {PREFIX}{name}")
        if check_shapes and tuple(canonical[name].shape) != shape:
            raise MtpCheckpointError(
                f"MTP tensor {PREFIX}{name} has shape {tuple(canonical[name].shape)}, config implies {shape}"
            )
    return {name: canonical[name] for name in mtp_expected_shapes(cfg)}


def to_compute_layout(tensor: torch.Tensor) -> torch.Tensor:
    """[out, in] → [in, out] (experts [E, out, in] → [E, in, out]); 1-D tensors unchanged. Its own
    inverse."""
    if tensor.dim() == 2:
        return tensor.t().contiguous()
    if tensor.dim() == 3:
        return tensor.transpose(1, 2).contiguous()
    return tensor


class MtpKv:
    """One sequence's MTP attention KV, dense by position: [layers, capacity, 2, Hkv, D]. Entries
    before `valid_from` (prompt positions whose target hidden states this engine never saw) are
    never attended to; entries past the last accepted position are simply overwritten later."""

    _uids = itertools.count()

    def __init__(self, cfg: ModelConfig, valid_from: int, dtype: torch.dtype, device: torch.device) -> None:
        self.uid = next(MtpKv._uids)  # names this KV to the follower ranks (engine/parallel/spec_sync)
        self.valid_from = valid_from
        self._shape = (cfg.mtp_num_hidden_layers, 2, cfg.num_key_value_heads, cfg.head_dim)
        self.data = torch.zeros((self._shape[0], 64, *self._shape[1:]), dtype=dtype, device=device)

    def ensure(self, end: int) -> None:
        """Room for positions < end."""
        capacity = self.data.shape[1] + self.valid_from
        if end <= capacity:
            return
        size = max(end - self.valid_from, 2 * self.data.shape[1])
        grown = torch.zeros(
            (self._shape[0], size, *self._shape[1:]), dtype=self.data.dtype, device=self.data.device
        )
        grown[:, : self.data.shape[1]] = self.data
        self.data = grown


class MtpHead:
    def __init__(
        self,
        cfg: ModelConfig,
        weights: dict[str, torch.Tensor],
        embed: torch.Tensor,
        lm_head_t: torch.Tensor,
        model=None,
    ) -> None:
        """`weights`: MTP tensors in compute layout (see `to_compute_layout`), canonical names.
        `model`: the loaded `HybridModel` the head drafts for; its (vocab-parallel) embedding and
        lm head and its rank's place in the group are then the head's (`cfg` is its local one)."""
        self.cfg = cfg
        self.w = weights
        self.embed = embed
        self.lm_head_t = lm_head_t  # [H, vocab]
        self.num_layers = cfg.mtp_num_hidden_layers
        self.model = model
        comm, parallel = (model.comm, model.parallel) if model is not None else (SINGLE, ParallelConfig())
        self.comm = comm
        self.reduce_attention = comm.splits(parallel.tp)
        self.reduce_ffn = [
            comm.splits(parallel.tp) or (cfg.is_moe_layer(i) and parallel.ep > 1)
            for i in range(self.num_layers)
        ]
        self.first_expert = cfg.num_experts // parallel.ep * comm.rank if parallel.ep > 1 else 0
        # Shared expert replicated (tp = 1, ep > 1): rank 0 adds it, the all-reduce counts it once.
        self.with_shared = parallel.tp > 1 or comm.rank == 0
        self._fused: dict[str, tuple] = {}  # prefix -> fused q/k/v or MoE weights (inference only)
        self._plus_one: dict[str, tuple] = {}  # norm weight name -> (w, version, 1 + w, shape) (inference)
        self._rope_table = RopeTable(cfg.rotary_dim, cfg.head_dim, cfg.rope_theta)  # drafting's rope
        self._stacked = StackedCaches()  # the drafting sequences' caches, kept stacked between calls

    @classmethod
    def from_model(cls, model) -> MtpHead | None:
        """The head of a loaded `HybridModel` (its `extra_weights`), or None without MTP weights."""
        canonical = mtp_canonical(model.config, model.extra_weights, check_shapes=not model.comm.active)
        if canonical is None:
            return None
        weights = {k: to_compute_layout(v.to(model.dtype)) for k, v in canonical.items()}
        return cls(model.config, weights, model.embed_tokens, model.lm_head_t, model)

    def release(self, kv: MtpKv) -> None:
        """A sequence's MTP KV is no longer used (the leader of a group tells its followers)."""

    # ---- one forward ---------------------------------------------------------------------------
    def forward(
        self,
        hidden: torch.Tensor,
        next_tokens: torch.Tensor,
        positions: torch.Tensor,
        groups: list[CachedGroup] | list[tuple[None, int, int]],
    ) -> torch.Tensor:
        """hidden [N, H] (target final-normed, or a previous MTP output), next_tokens [N], positions
        [N]; `groups`: one `CachedGroup` per drafting sequence (its rows at consecutive positions,
        attending to its MtpKv), or (None, row_start, row_end) for training (dense causal attention
        over the rows alone). Returns the normed output: every row's in training; drafting, each
        group's last row's ([len(groups), H]: the only row a draft reads), the last layer's
        queries, attention output and ffn run for those rows only (every row's K/V is written)."""
        w = self.w
        embedded = (
            self.model.embed(next_tokens) if self.model is not None else F.embedding(next_tokens, self.embed)
        )
        e = self._norm(embedded, "pre_fc_norm_embedding.weight")
        h = self._norm(hidden.to(e.dtype), "pre_fc_norm_hidden.weight")
        x = torch.cat([e, h], dim=-1) @ w["fc.weight"]
        rope = self._rope(positions, groups, x.dtype)
        last = self._last_rows(groups, x.device)
        for i in range(self.num_layers):
            x = self._layer(i, x, rope, positions, groups, last if i == self.num_layers - 1 else None)
        return self._norm(x, "norm.weight")

    @staticmethod
    def _last_rows(groups, device: torch.device) -> torch.Tensor | None:
        """Drafting with a group of several rows: each group's last row (a tensor of indices)."""
        if not groups or not isinstance(groups[0], CachedGroup) or len(groups) == groups[-1].row_end:
            return None
        return torch.tensor([g.row_end - 1 for g in groups], device=device)

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        if self.model is not None:  # vocab-parallel under tp: every rank's part, gathered
            return self.model.project(out)
        return (out @ self.lm_head_t).float()

    def _layer(self, i: int, x, rope, positions, groups, last: torch.Tensor | None = None) -> torch.Tensor:
        """`last`: only these rows go on past the K/V (see `forward`)."""
        p = f"layers.{i}."
        h = self._norm(x, p + "input_layernorm.weight")
        mixed = self._attention(i, h, rope, positions, groups, last)
        if last is not None:
            x = x.index_select(0, last)
        x = x + (self.comm.all_reduce(mixed) if self.reduce_attention else mixed)
        h = self._norm(x, p + "post_attention_layernorm.weight")
        ffn = self._ffn(i, h)
        return x + (self.comm.all_reduce(ffn) if self.reduce_ffn[i] else ffn)

    def _attention(
        self, i: int, x, rope, positions, groups, last: torch.Tensor | None = None
    ) -> torch.Tensor:
        cfg, p = self.cfg, f"layers.{i}.self_attn."
        rows, heads, kv_heads, dim = (
            x.shape[0],
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        q_gate, k, v = self._qkv(x, p)
        q, gate = torch.chunk(q_gate.view(rows, heads, 2 * dim), 2, dim=-1)
        q = self._norm(q, p + "q_norm.weight")
        k = self._norm(k.view(rows, kv_heads, dim), p + "k_norm.weight")
        if torch.is_grad_enabled():
            q, k = rope(q), rope(k)
        else:  # one rope over q and k side by side: half the ops
            q, k = torch.split(rope(torch.cat([q, k], dim=1)), [heads, kv_heads], dim=1)
        v = v.view(rows, kv_heads, dim)
        scale = dim**-0.5
        if last is not None:  # the queries of the rows that go on
            q, gate, rows = q.index_select(0, last), gate.index_select(0, last), last.shape[0]
        if groups and isinstance(groups[0], CachedGroup):  # drafting: every sequence in one call
            out = cached_attention(i, q, k, v, groups, scale, self._stacked, last is not None)
        else:  # training: dense causal attention over each group's rows alone
            outs = [chunk_causal_attention(q[s:e], k[s:e], v[s:e], 0, scale) for _, s, e in groups]
            out = torch.cat(outs) if len(outs) > 1 else outs[0]
        out = out.reshape(rows, heads * dim) * torch.sigmoid(gate.reshape(rows, heads * dim))
        return self._proj(out, p + "o_proj")

    def _rope(self, positions: torch.Tensor, groups, dtype: torch.dtype):
        """A function rotating [N, H, head_dim] rows to `positions`. Drafting (the groups name
        every row's position on the host): the head's `RopeTable`, a few ops per call."""
        cfg = self.cfg
        if not groups or not isinstance(groups[0], CachedGroup):
            cos, sin = rope_cos_sin(positions, cfg.rotary_dim, cfg.rope_theta, dtype)
            return lambda x: apply_rope(x, cos, sin)
        end = max(g.first_pos + g.row_end - g.row_start for g in groups)
        return self._rope_table.rotation(positions, end, dtype)

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """`rms_norm_zero_centered` with weight `name`. Inference: one fused `torch.rms_norm` with
        1 + w computed once (rebuilt when the weight is replaced or changes in place) instead of
        ~8 ops; the head only drafts, so rounding differences cannot change what a verify emits."""
        weight = self.w[name]
        if torch.is_grad_enabled():
            return rms_norm_zero_centered(x, weight, self.cfg.rms_norm_eps)
        cached = self._plus_one.get(name)
        if cached is None or cached[0] is not weight or cached[1] != weight._version:
            cached = (weight, weight._version, 1.0 + weight.float(), (weight.shape[-1],))
            self._plus_one[name] = cached
        if x.dtype == torch.float32:
            return torch.rms_norm(x, cached[3], cached[2], self.cfg.rms_norm_eps)
        return torch.rms_norm(x.float(), cached[3], cached[2], self.cfg.rms_norm_eps).to(x.dtype)

    def _qkv(self, x: torch.Tensor, p: str) -> tuple[torch.Tensor, ...]:
        """q (with its gate), k, v. Inference: one matmul over the three weights concatenated (the
        concatenation is rebuilt when a weight changes in place); training: autograd through each."""
        names = [p + n for n in ("q_proj", "k_proj", "v_proj")]
        weights = [self.w[n + ".weight"] for n in names]
        biases = [self.w.get(n + ".bias") for n in names]
        if torch.is_grad_enabled() or len({b is None for b in biases}) > 1:
            return tuple(self._proj(x, n) for n in names)
        versions = tuple(t._version for t in weights + [b for b in biases if b is not None])
        fused = self._fused.get(p)
        if fused is None or fused[0] != versions:
            bias = torch.cat(biases) if biases[0] is not None else None
            fused = (versions, torch.cat(weights, dim=1), bias, [w.shape[1] for w in weights])
            self._fused[p] = fused
        _, weight, bias, sizes = fused
        return torch.split(x @ weight if bias is None else torch.addmm(bias, x, weight), sizes, dim=-1)

    def _proj(self, x: torch.Tensor, name: str) -> torch.Tensor:
        y = x @ self.w[name + ".weight"]
        bias = self.w.get(name + ".bias")
        return y if bias is None else y + bias

    def _ffn(self, i: int, x: torch.Tensor) -> torch.Tensor:
        p = f"layers.{i}.mlp."
        if not self.cfg.is_moe_layer(i):
            return _swiglu(x, self.w, p)
        cfg = self.cfg
        weights = MoeWeights.compute_layout(self.w, p)
        if self._fusable(weights, x.shape[0]):  # drafting: the whole block in two matmuls
            return fused_moe_block(
                x, self._fused_moe(p, weights), cfg.num_experts_per_tok, cfg.norm_topk_prob
            )
        return sparse_moe(
            x,
            weights,
            cfg.num_experts_per_tok,
            cfg.norm_topk_prob,
            self.first_expert,
            cfg.num_experts,
            self.with_shared,
            DENSE_MOE_MAX_ROWS,
        )

    def _fusable(self, weights: MoeWeights, rows: int) -> bool:
        """Inference over a few rows, every expert and the shared one held here."""
        return (
            not torch.is_grad_enabled()
            and rows <= DENSE_MOE_MAX_ROWS
            and self.with_shared
            and weights.gate_up.shape[0] == self.cfg.num_experts
        )

    def _fused_moe(self, p: str, weights: MoeWeights) -> FusedMoeWeights:
        """The block's fused weights, rebuilt when a weight is replaced or changes in place."""
        key = tuple(
            (id(t), t._version) for t in (getattr(weights, f.name) for f in dataclasses.fields(weights))
        )
        cached = self._fused.get(p)
        if cached is None or cached[0] != key:
            cached = (key, FusedMoeWeights.build(weights))
            self._fused[p] = cached
        return cached[1]


def _swiglu(x: torch.Tensor, w: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return swiglu(x, *(w[f"{p}{n}_proj.weight"] for n in ("gate", "up", "down")))


# At most this many rows (drafting: a few per sequence; batch 8 at k=2 included) run every expert
# densely, the unselected ones weighted 0: a few batched matmuls, no per-expert loop, no host sync.
# Measured on CPU (hidden 128, 8 experts): dense wins up to ~48 rows.
DENSE_MOE_MAX_ROWS = 32
