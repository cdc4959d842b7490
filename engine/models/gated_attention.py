"""Gated full attention over the paged KV of `CacheTensors`.

q_proj emits, per head, [query | gate]; q and k get a zero-centred RMSNorm over the head dim and
partial RoPE; GQA; the attention output is multiplied by sigmoid(gate) before o_proj.
"""

from __future__ import annotations

import torch

from engine.cache.tensors import CacheTensors
from engine.model_config import ModelConfig
from engine.models.forward_batch import ForwardBatch
from engine.models.linear import apply_linear, build_linear, fp8_block
from engine.ops.attention import chunk_causal_attention
from engine.ops.dispatch import use_triton
from engine.ops.norms import rms_norm_zero_centered
from engine.ops.paged_attention import paged_attention_decode
from engine.ops.paged_attention_verify import paged_attention_verify
from engine.ops.rope import apply_rope
from engine.ops.triton.paged_extend import paged_extend_triton


class GatedAttention:
    def __init__(self, cfg: ModelConfig, weights: dict[str, torch.Tensor], cache_index: int) -> None:
        self.cfg = cfg
        self.cache_index = cache_index  # index among the full-attention layers
        # Plain weights are kept as [in, out]; FP8 ones as `Fp8BlockLinear` (engine/models/linear.py).
        qkv_bias = torch.cat([weights[f"{p}_proj.bias"] for p in "qkv"]) if cfg.attention_bias else None
        o_bias = weights.get("o_proj.bias")  # under tp: rank 0's only (the all-reduce adds it once)
        block = fp8_block(cfg)
        self.qkv_proj = build_linear(weights, [f"{p}_proj.weight" for p in "qkv"], block, qkv_bias)
        self.o_proj = build_linear(weights, ["o_proj.weight"], block, o_bias)
        # A plain weight's bias is added here (addmm); an FP8 linear adds its own.
        self.qkv_bias = qkv_bias if isinstance(self.qkv_proj, torch.Tensor) else None
        self.o_bias = o_bias if isinstance(self.o_proj, torch.Tensor) else None
        self.q_norm, self.k_norm = weights["q_norm.weight"], weights["k_norm.weight"]
        q_out = cfg.num_attention_heads * cfg.head_dim * 2
        kv_out = cfg.num_key_value_heads * cfg.head_dim
        self.split = [q_out, kv_out, kv_out]
        self.scale = cfg.head_dim**-0.5

    def forward(
        self,
        x: torch.Tensor,
        batch: ForwardBatch,
        cache: CacheTensors,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        cfg = self.cfg
        rows, heads, kv_heads, dim = (
            x.shape[0],
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        q_gate, k, v = torch.split(apply_linear(x, self.qkv_proj, self.qkv_bias), self.split, dim=-1)
        q, gate = torch.chunk(q_gate.view(rows, heads, 2 * dim), 2, dim=-1)
        q = rms_norm_zero_centered(q, self.q_norm, cfg.rms_norm_eps)
        k = rms_norm_zero_centered(k.view(rows, kv_heads, dim), self.k_norm, cfg.rms_norm_eps)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        v = v.view(rows, kv_heads, dim)
        kv_pool = cache.kv[self.cache_index]  # [num_pages, 2, block_size, Hkv, D]
        kv_pool[batch.write_pages, 0, batch.write_offsets] = k.to(kv_pool.dtype)
        kv_pool[batch.write_pages, 1, batch.write_offsets] = v.to(kv_pool.dtype)
        out = torch.empty_like(q)
        n = batch.num_decode + batch.num_verify_rows  # verify rows attend like decode rows
        if n and (use_triton(q) or not batch.verify_groups):
            out[:n] = paged_attention_decode(
                q[:n],
                kv_pool,
                batch.decode_block_tables,
                batch.decode_context_lens,
                self.scale,
                validate=False,
            )
        elif n:  # torch: a verify sequence's rows share one gather of its pages
            self._decode_and_verify(q, out, kv_pool, batch)
        meta = batch.prefill_meta
        if meta is not None:  # the Triton path: every prefill chunk in one launch
            out[meta.row_start :] = paged_extend_triton(
                q[meta.row_start :].contiguous(), kv_pool, meta.block_tables, meta.cu_seqlens,
                meta.start_pos, self.scale, meta.max_len,
            )  # fmt: skip
        for span in batch.prefills if meta is None else ():
            context = span.start_pos + span.row_end - span.row_start
            pages = kv_pool[span.pages]  # [P, 2, block_size, Hkv, D]
            keys = pages[:, 0].reshape(-1, kv_heads, dim)[:context].to(q.dtype)
            values = pages[:, 1].reshape(-1, kv_heads, dim)[:context].to(q.dtype)
            out[span.row_start : span.row_end] = chunk_causal_attention(
                q[span.row_start : span.row_end], keys, values, span.start_pos, self.scale
            )
        out = out.reshape(rows, heads * dim) * torch.sigmoid(gate.reshape(rows, heads * dim))
        return apply_linear(out, self.o_proj, self.o_bias)

    def _decode_and_verify(self, q, out, kv_pool, batch: ForwardBatch) -> None:
        tables, lens, n = batch.decode_block_tables, batch.decode_context_lens, batch.num_decode
        if n:
            out[:n] = paged_attention_decode(q[:n], kv_pool, tables[:n], lens[:n], self.scale, validate=False)
        for g in batch.verify_groups:
            s, e = g.row_start, g.row_start + g.step_slots.numel()
            out[s:e] = paged_attention_verify(q[s:e], kv_pool, tables[s:e], lens[s:e], g.steps, self.scale)

