"""`HybridModel`: the Qwen3-Next / Qwen3.5 decoder stack as plain tensors and small layer objects.

Each decoder layer: x += mixer(norm(x)); x += ffn(norm(x)), where the mixer is a Gated DeltaNet
("linear_attention") or gated full attention ("full_attention") and the ffn a dense MLP or a
sparse MoE. Norms are zero-centred RMSNorms (weight stored as an offset from 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine.cache.tensors import CacheTensors
from engine.model_config import ModelConfig
from engine.models.forward_batch import ForwardBatch
from engine.models.gated_attention import GatedAttention
from engine.models.gated_deltanet import GatedDeltaNet
from engine.models.linear import fp8_block
from engine.models.moe import DenseMlp, SparseMoe
from engine.ops.norms import rms_norm_zero_centered
from engine.ops.rope import rope_cos_sin
from engine.parallel.comm import SINGLE, Comm
from engine.parallel.config import ParallelConfig


class DecoderLayer:
    def __init__(
        self,
        cfg: ModelConfig,
        layer_id: int,
        weights: dict[str, torch.Tensor],
        cache_index: int,
        comm: Comm = SINGLE,
        parallel: ParallelConfig = ParallelConfig(),
    ) -> None:
        """Under tp the mixer and the ffn return partial sums (row-parallel output projections):
        one all-reduce after each. Under ep alone the mixer is whole and only the MoE reduces."""
        self.cfg = cfg
        self.comm = comm
        self.layer_id = layer_id
        self.kind = cfg.layer_types[layer_id]
        self.input_norm = weights["input_layernorm.weight"]
        self.post_norm = weights["post_attention_layernorm.weight"]
        if self.kind == "full_attention":
            self.mixer: GatedAttention | GatedDeltaNet = GatedAttention(
                cfg, _sub(weights, "self_attn."), cache_index
            )
        else:
            self.mixer = GatedDeltaNet(cfg, _sub(weights, "linear_attn."), cache_index)
        mlp = _sub(weights, "mlp.")
        moe = cfg.is_moe_layer(layer_id)
        if moe:
            local_experts = cfg.num_experts // parallel.ep
            # Shared expert replicated (tp = 1, ep > 1): rank 0 adds it, the all-reduce counts it once.
            with_shared = parallel.tp > 1 or comm.rank == 0
            self.ffn: SparseMoe | DenseMlp = SparseMoe(
                cfg,
                mlp,
                first_expert=local_experts * comm.rank if parallel.ep > 1 else 0,
                with_shared=with_shared,
            )
        else:
            self.ffn = DenseMlp(mlp, block=fp8_block(cfg))
        self.reduce_mixer = comm.splits(parallel.tp)
        self.reduce_ffn = comm.splits(parallel.tp) or (moe and parallel.ep > 1)

    def forward(
        self,
        x: torch.Tensor,
        batch: ForwardBatch,
        cache: CacheTensors,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        eps = self.cfg.rms_norm_eps
        h = rms_norm_zero_centered(x, self.input_norm, eps)
        if isinstance(self.mixer, GatedAttention):
            mixed = self.mixer.forward(h, batch, cache, rope)
        else:
            mixed = self.mixer.forward(h, batch, cache)
        x = x + (self.comm.all_reduce(mixed) if self.reduce_mixer else mixed)
        h = rms_norm_zero_centered(x, self.post_norm, eps)
        if isinstance(self.ffn, SparseMoe):
            ffn = self.ffn.forward(h)
        else:
            ffn = self.ffn.forward(h)
        return x + (self.comm.all_reduce(ffn) if self.reduce_ffn else ffn)


class HybridModel:
    def __init__(
        self,
        cfg: ModelConfig,
        weights: dict[str, torch.Tensor],
        extra: dict[str, torch.Tensor] | None = None,
        comm: Comm = SINGLE,
        parallel: ParallelConfig = ParallelConfig(),
    ) -> None:
        """`weights`: canonical tensors (see `checkpoint_format`), consumed: each layer's entries are
        removed once the layer has its compute-layout copies, so a load never holds the model twice.
        `extra`: e.g. `mtp.*` tensors, kept aside for speculative decoding. Under parallelism
        `cfg` is the rank's local config and `weights` its shard (`engine/parallel/shard.py`);
        embedding and lm head are then vocab-parallel (rows [rank * V_local, ...))."""
        self.config = cfg
        self.comm, self.parallel = comm, parallel
        self.vocab_parallel = comm.splits(parallel.tp)
        self.embed_tokens = weights["embed_tokens.weight"]
        self.norm = weights["norm.weight"]
        self.lm_head = self.embed_tokens if cfg.tie_word_embeddings else weights["lm_head.weight"]
        # [hidden, vocab] copy for `h @ w` (~3x faster than F.linear at decode shapes).
        self.lm_head_t = self.lm_head.t().contiguous()
        attention_index = {layer: i for i, layer in enumerate(cfg.attention_layer_ids)}
        linear_index = {layer: i for i, layer in enumerate(cfg.linear_layer_ids)}
        self.layers = []
        for i in range(cfg.num_hidden_layers):
            layer_weights = _take(weights, f"layers.{i}.")
            cache_index = attention_index.get(i, linear_index.get(i, -1))
            self.layers.append(DecoderLayer(cfg, i, layer_weights, cache_index, comm, parallel))
            del layer_weights
        self.extra_weights = dict(extra or {})

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.device

    def hidden_states(
        self,
        batch: ForwardBatch,
        cache: CacheTensors,
        layer_callback: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Run every decoder layer over the batch rows; returns the pre-final-norm hidden states."""
        cfg = self.config
        x = self.embed(batch.token_ids)
        rope = rope_cos_sin(batch.positions, cfg.rotary_dim, cfg.rope_theta, x.dtype)
        for layer in self.layers:
            x = layer.forward(x, batch, cache, rope)
            if layer_callback is not None:
                layer_callback(layer.layer_id)
        return x

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (vocab-parallel: each rank looks up its rows, one all-reduce); the MTP
        head embeds through here too."""
        if not self.vocab_parallel:
            return F.embedding(token_ids, self.embed_tokens)
        per = self.embed_tokens.shape[0]
        local = token_ids - self.comm.rank * per
        mine = (local >= 0) & (local < per)
        x = F.embedding(torch.where(mine, local, 0), self.embed_tokens) * mine.unsqueeze(-1)
        return self.comm.all_reduce(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + lm_head, fp32 logits (vocab-parallel: gathered from every rank)."""
        return self.project(rms_norm_zero_centered(hidden, self.norm, self.config.rms_norm_eps))

    def project(self, normed: torch.Tensor) -> torch.Tensor:
        """lm_head over already-normed rows (the speculative path's and the MTP head's), fp32
        logits (vocab-parallel: gathered from every rank)."""
        logits = normed @ self.lm_head_t
        if self.vocab_parallel:
            logits = self.comm.all_gather_last(logits)[:, : self.config.vocab_size]
        return logits.float()


def _take(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """`_sub`, removing the entries from `weights`."""
    names = [k for k in weights if k.startswith(prefix)]
    return {k[len(prefix) :]: weights.pop(k) for k in names}


def _sub(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
