"""Gated DeltaNet layer (linear attention) over the recurrent-state slots of `CacheTensors`.

x → one fused projection [q k v | z | b | a] → causal depthwise conv + SiLU on q k v (conv state per
slot) → L2-normalised q, k; beta = sigmoid(b); log-decay g = -exp(A_log) · softplus(a + dt_bias)
→ gated delta rule (ssm state per slot, fp32) → RMSNorm gated by silu(z) → out_proj.
Key heads are shared by `Hv / Hk` value heads each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.cache.tensors import CacheTensors
from engine.model_config import ModelConfig
from engine.models.forward_batch import ForwardBatch, PrefillMeta, VerifyGroup
from engine.models.linear import apply_linear, build_linear, fp8_block
from engine.ops.conv import causal_conv1d_prefill, causal_conv1d_step
from engine.ops.dispatch import use_triton
from engine.ops.gdn_chunked import chunk_gated_delta_rule
from engine.ops.gdn_fla import fla_available, fla_chunk_gated_delta_rule
from engine.ops.gdn_recurrent import recurrent_gated_delta_rule, recurrent_gated_delta_rule_steps
from engine.ops.norms import gated_rms_norm, l2_normalize
from engine.ops.triton.causal_conv1d import causal_conv1d_update, causal_conv1d_varlen
from engine.ops.triton.gdn_chunked import chunk_gated_delta_rule_triton
from engine.ops.triton.gdn_decode import gdn_decode_step


class GatedDeltaNet:
    def __init__(self, cfg: ModelConfig, weights: dict[str, torch.Tensor], cache_index: int) -> None:
        self.cfg = cfg
        self.cache_index = cache_index  # index among the linear-attention layers
        # Plain weights are kept as [in, out]; FP8 ones as `Fp8BlockLinear` (engine/models/linear.py).
        block = fp8_block(cfg)
        self.in_proj = build_linear(weights, [f"in_proj_{p}.weight" for p in ("qkv", "z", "b", "a")], block)
        self.conv_weight = weights["conv1d.weight"].squeeze(1).contiguous()  # [C, K]
        self.neg_a = -weights["A_log"].float().exp()
        self.dt_bias = weights["dt_bias"].float()
        self.norm_weight = weights["norm.weight"]
        self.out_proj = build_linear(weights, ["out_proj.weight"], block)
        self.split = [
            cfg.conv_dim,
            cfg.linear_value_dim,
            cfg.linear_num_value_heads,
            cfg.linear_num_value_heads,
        ]

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cache: CacheTensors) -> torch.Tensor:
        cfg = self.cfg
        mixed, z, b, a = torch.split(apply_linear(x, self.in_proj), self.split, dim=-1)
        mixed = self._conv(mixed, batch, cache)
        q, k, v = torch.split(mixed, [cfg.linear_key_dim, cfg.linear_key_dim, cfg.linear_value_dim], dim=-1)
        rows = x.shape[0]
        group = cfg.linear_num_value_heads // cfg.linear_num_key_heads
        q = l2_normalize(q.reshape(rows, cfg.linear_num_key_heads, -1).float())
        k = l2_normalize(k.reshape(rows, cfg.linear_num_key_heads, -1).float())
        if group > 1:
            q, k = q.repeat_interleave(group, dim=1), k.repeat_interleave(group, dim=1)
        v = v.reshape(rows, cfg.linear_num_value_heads, -1)
        beta = torch.sigmoid(b.float())
        g = self.neg_a * F.softplus(a.float() + self.dt_bias)
        core = self._delta_rule(q, k, v, g, beta, batch, cache)  # [N, Hv, Dv]
        out = gated_rms_norm(core, z.reshape(core.shape), self.norm_weight, cfg.rms_norm_eps)
        return apply_linear(out.reshape(rows, -1), self.out_proj)

    def _conv(self, mixed: torch.Tensor, batch: ForwardBatch, cache: CacheTensors) -> torch.Tensor:
        conv_pool = cache.conv[self.cache_index]
        parts = []
        if batch.num_decode:
            slots = batch.decode_slots
            if use_triton(mixed):
                parts.append(
                    causal_conv1d_update(mixed[: batch.num_decode], self.conv_weight, conv_pool, slots)
                )
            else:
                out, new_state = causal_conv1d_step(
                    mixed[: batch.num_decode], conv_pool[slots], self.conv_weight
                )
                conv_pool[slots] = new_state.to(conv_pool.dtype)
                parts.append(out)
        for group in batch.verify_groups:
            parts.append(self._verify_conv(mixed, group, conv_pool))
        meta = batch.prefill_meta
        if meta is not None:  # the Triton path: every prefill chunk in one launch
            rows = mixed[meta.row_start :].contiguous()
            parts.append(
                causal_conv1d_varlen(
                    rows, self.conv_weight, conv_pool, meta.cu_seqlens, meta.slots, meta.has_state
                )
            )
        for span in batch.prefills if meta is None else ():
            state = (
                conv_pool[span.state_slot] if span.start_pos else torch.zeros_like(conv_pool[span.state_slot])
            )
            out, new_state = causal_conv1d_prefill(
                mixed[span.row_start : span.row_end], state, self.conv_weight
            )
            conv_pool[span.state_slot] = new_state
            parts.append(out)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _delta_rule(self, q, k, v, g, beta, batch: ForwardBatch, cache: CacheTensors) -> torch.Tensor:
        ssm_pool = cache.ssm[self.cache_index]
        parts = []
        n = batch.num_decode
        if n:
            parts.append(
                self._decode_step(q[:n], k[:n], v[:n], g[:n], beta[:n], batch.decode_slots, ssm_pool)
            )
        for group in batch.verify_groups:
            parts.append(self._verify_delta_rule(q, k, v, g, beta, group, ssm_pool))
        meta = batch.prefill_meta
        with_fla = meta is not None and q.is_cuda and fla_available()
        if with_fla:
            parts.append(self._prefill_fla(q, k, v, g, beta, meta, ssm_pool))
        for span in batch.prefills if not with_fla else ():
            s, e = span.row_start, span.row_end
            init = ssm_pool[span.state_slot].unsqueeze(0) if span.start_pos else None
            # CUDA only (not FORCE_TRITON): under the interpreter it would take minutes per model forward.
            prefill_rule = chunk_gated_delta_rule_triton if q.is_cuda else chunk_gated_delta_rule
            out, state = prefill_rule(
                q[None, s:e], k[None, s:e], v[None, s:e], g[None, s:e], beta[None, s:e], init
            )
            ssm_pool[span.state_slot] = state[0].to(ssm_pool.dtype)
            parts.append(out[0])
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    @staticmethod
    def _prefill_fla(q, k, v, g, beta, meta: PrefillMeta, ssm_pool: torch.Tensor) -> torch.Tensor:
        """All prefill chunks in one varlen call of fla-core's chunked kernel (optional, CUDA only)."""
        r = meta.row_start
        init = ssm_pool[meta.slots] * meta.has_state[:, None, None, None].to(ssm_pool.dtype)
        out, state = fla_chunk_gated_delta_rule(
            q[None, r:],
            k[None, r:],
            v[None, r:],
            g[None, r:],
            beta[None, r:],
            init,
            cu_seqlens=meta.cu_seqlens,
        )
        ssm_pool[meta.slots] = state.to(ssm_pool.dtype)
        return out[0]

    def _verify_conv(self, mixed: torch.Tensor, group: VerifyGroup, conv_pool: torch.Tensor) -> torch.Tensor:
        """Conv over T rows per chunk from its live slot; the state after row t goes to slot t.

        Time-major ([V, K-1+T, C], channels contiguous): the windows of every row are one
        unfold, multiplied by the taps and summed in tap order as `causal_conv1d_step` sums them,
        so row t equals a decode step bit for bit (over the channel-major window, where the
        unfolded taps are not the innermost stride, the same ops cost ~3x)."""
        num, steps = group.step_slots.shape
        rows = mixed[group.row_start : group.row_start + num * steps].view(num, steps, -1)
        state = conv_pool[group.step_slots[:, 0]]  # [V, C, K-1]
        window = torch.cat([state.transpose(1, 2).to(rows.dtype), rows], dim=1)  # [V, K-1+T, C]
        kernel = self.conv_weight.shape[-1]
        out = (window.unfold(1, kernel, 1) * self.conv_weight).sum(-1)  # [V, T, C]
        states = window.unfold(1, state.shape[-1], 1)[:, 1:]  # [V, T, C, K-1]: after row t
        conv_pool.index_copy_(0, group.step_slots.reshape(-1), states.flatten(0, 1).to(conv_pool.dtype))
        return F.silu(out).view(num * steps, -1)

    @staticmethod
    def _verify_delta_rule(q, k, v, g, beta, group: VerifyGroup, ssm_pool: torch.Tensor) -> torch.Tensor:
        """Recurrent steps over each chunk's T rows; the state after row t goes to slot t (the live
        slot holds row 0's), so acceptance picks a slot instead of copying a state back."""
        num, steps = group.step_slots.shape
        s, e = group.row_start, group.row_start + num * steps

        def per_chunk(x: torch.Tensor) -> torch.Tensor:  # (a step of verifies only: no slice)
            return (x if s == 0 and e == x.shape[0] else x[s:e]).unflatten(0, (num, steps))

        q, k, v, g, beta = (per_chunk(x) for x in (q, k, v, g, beta))
        out, states = recurrent_gated_delta_rule_steps(q, k, v, g, beta, ssm_pool[group.step_slots[:, 0]])
        # states [V, T, ...] views a time-major buffer: written time-major, it needs no copy.
        slots = group.step_slots.t().reshape(-1)
        ssm_pool.index_copy_(0, slots, states.transpose(0, 1).flatten(0, 1).to(ssm_pool.dtype))
        return out.reshape(num * steps, *v.shape[2:])

    @staticmethod
    def _decode_step(q, k, v, g, beta, slots: torch.Tensor, ssm_pool: torch.Tensor) -> torch.Tensor:
        if use_triton(ssm_pool):
            out, _ = gdn_decode_step(
                q[:, None],
                k[:, None],
                v[:, None],
                g[:, None],
                beta[:, None],
                state_slots=slots,
                state_pool=ssm_pool,
            )
            return out[:, 0].to(v.dtype)
        out, state = recurrent_gated_delta_rule(
            q[:, None], k[:, None], v[:, None], g[:, None], beta[:, None], ssm_pool[slots]
        )
        ssm_pool[slots] = state.to(ssm_pool.dtype)
        return out[:, 0]
