"""The `kernels` section of bench.gpu: each kernel at the 80B slice's widths against its bound.

Memory-bound kernels report the bytes they must move / their time, as a fraction of the device's
copy bandwidth; compute-bound ones their FLOPs / time against the measured matmul rate. On CPU the
Triton kernels run under TRITON_INTERPRET=1 at tiny sizes: the section then only proves it runs.
"""

from __future__ import annotations

import importlib.util
from functools import partial

import torch

from bench.gpu_timing import best_of, measure_copy_bandwidth, measure_matmul_flops
from engine.ops.gdn_chunked import chunk_gated_delta_rule
from engine.ops.moe import grouped_mm_supported, moe_grouped_torch
from engine.ops.paged_attention import paged_attention_torch
from engine.ops.triton.causal_conv1d import causal_conv1d_update, causal_conv1d_varlen
from engine.ops.triton.fused_moe import fused_moe_triton
from engine.ops.triton.gdn_chunked import chunk_gated_delta_rule_triton
from engine.ops.triton.gdn_decode import gdn_decode_step
from engine.ops.triton.paged_attention_splitk import paged_attention_splitk
from engine.ops.triton.paged_extend import paged_extend_triton

# (GPU size, CPU-interpreter size) of each dimension.
SIZES = {
    "cuda": dict(batch=64, context=8192, hidden=2048, experts=64, top_k=10, inter=512, v_heads=32,
                 head=128, q_heads=16, kv_heads=2, attn_dim=256, channels=8192, prefill=8192),
    "cpu": dict(batch=2, context=64, hidden=64, experts=8, top_k=2, inter=32, v_heads=2,
                head=32, q_heads=4, kv_heads=2, attn_dim=32, channels=64, prefill=64),
}  # fmt: skip


def kernels_section(args) -> dict:
    device = args.device
    s = SIZES[device]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    bandwidth = measure_copy_bandwidth(device)
    matmul = measure_matmul_flops(device, torch.bfloat16 if device == "cuda" else torch.float32)
    repeats = 10 if device == "cuda" else 1
    rows = []

    def add(name: str, fn, *, bytes_moved: float = 0.0, flops: float = 0.0) -> None:
        seconds = best_of(fn, device, repeats)
        row = {"kernel": name, "seconds": seconds}
        if bytes_moved:
            row.update(
                bytes=bytes_moved,
                achieved_B_s=bytes_moved / seconds,
                fraction_of_bound=bytes_moved / seconds / bandwidth,
            )
        if flops:
            row.update(
                flops=flops, achieved_flop_s=flops / seconds, fraction_of_bound=flops / seconds / matmul
            )
        rows.append(row)

    for batch in (s["batch"], 1):
        q, kv, tables, lens = _paged_decode_inputs(s, batch, dtype, device)
        kv_bytes = batch * s["context"] * 2 * s["kv_heads"] * s["attn_dim"] * kv.element_size()
        scale = s["attn_dim"] ** -0.5
        add(
            f"paged decode split-K b{batch}x{s['context']}",
            partial(paged_attention_splitk, q, kv, tables, lens, scale),
            bytes_moved=kv_bytes,
        )
        add(
            f"paged decode torch b{batch}x{s['context']}",
            partial(paged_attention_torch, q, kv, tables, lens, scale),
            bytes_moved=kv_bytes,
        )
    for tokens in (1, s["batch"]):
        x, top_e, top_w, gate_up, down = _moe_inputs(s, tokens, dtype, device)
        used = int(top_e.unique().numel())
        weight_bytes = used * 3 * s["hidden"] * s["inter"] * gate_up.element_size()
        add(
            f"fused MoE triton t{tokens}",
            partial(fused_moe_triton, x, top_e, top_w, gate_up, down),
            bytes_moved=weight_bytes,
        )
        if grouped_mm_supported(device, dtype):
            add(
                f"MoE torch._grouped_mm t{tokens}",
                partial(moe_grouped_torch, x, top_e, top_w, gate_up, down),
                bytes_moved=weight_bytes,
            )
    for batch in (s["batch"], 1):
        args_gdn = _gdn_decode_inputs(s, batch, device)
        state_bytes = 2 * batch * s["v_heads"] * s["head"] * s["head"] * 4
        add(
            f"GDN decode step b{batch}",
            partial(gdn_decode_step, *args_gdn[:5], state_slots=args_gdn[5], state_pool=args_gdn[6]),
            bytes_moved=state_bytes,
        )
    x, weight, pool, cu, slots, has = _conv_inputs(s, dtype, device)
    add(
        f"causal conv1d prefill {s['prefill']}x{s['channels']}",
        partial(causal_conv1d_varlen, x, weight, pool, cu, slots, has),
        bytes_moved=2 * x.numel() * x.element_size(),
    )
    xb = x[: s["batch"]].contiguous()
    slots_b = torch.arange(s["batch"], device=device) % pool.shape[0]
    add(
        f"causal conv1d update b{s['batch']}",
        partial(causal_conv1d_update, xb, weight, pool, slots_b),
        bytes_moved=2 * xb.numel() * xb.element_size()
        + 2 * s["batch"] * pool[0].numel() * pool.element_size(),
    )
    q, kv, tables, cu, start = _extend_inputs(s, dtype, device)
    n = s["prefill"]
    extend_flops = 2 * n * n * s["q_heads"] * s["attn_dim"]  # causal: half of 4 N^2 H D
    add(
        f"paged extend {n} tokens",
        partial(paged_extend_triton, q, kv, tables, cu, start, 0.0625, max_chunk_len=n),
        flops=extend_flops,
    )
    gdn = _gdn_prefill_inputs(s, device)
    add(f"GDN chunked prefill torch {n} tokens", partial(chunk_gated_delta_rule, *gdn))
    add(f"GDN chunked prefill triton {n} tokens", partial(chunk_gated_delta_rule_triton, *gdn))
    if device == "cuda" and importlib.util.find_spec("fla") is not None:
        from engine.ops.gdn_fla import fla_chunk_gated_delta_rule

        add(f"GDN chunked prefill fla {n} tokens", partial(fla_chunk_gated_delta_rule, *gdn))
    return {"copy_bandwidth_B_s": bandwidth, "matmul_flop_s": matmul, "rows": rows}


def _paged_decode_inputs(s, batch, dtype, device):
    block = 16
    blocks = s["context"] // block
    kv = torch.randn(batch * blocks + 1, 2, block, s["kv_heads"], s["attn_dim"], device=device).to(dtype)
    tables = torch.randperm(batch * blocks, device=device).view(batch, blocks).to(torch.int32)
    lens = torch.full((batch,), s["context"], dtype=torch.int32, device=device)
    q = torch.randn(batch, s["q_heads"], s["attn_dim"], device=device).to(dtype)
    return q, kv, tables, lens


def _moe_inputs(s, tokens, dtype, device):
    x = torch.randn(tokens, s["hidden"], device=device).to(dtype)
    gate_up = (torch.randn(s["experts"], s["hidden"], 2 * s["inter"], device=device) * 0.02).to(dtype)
    down = (torch.randn(s["experts"], s["inter"], s["hidden"], device=device) * 0.02).to(dtype)
    top_w, top_e = torch.rand(tokens, s["experts"], device=device).topk(s["top_k"], dim=-1)
    return x, top_e, (top_w / top_w.sum(-1, keepdim=True)).to(dtype), gate_up, down


def _gdn_decode_inputs(s, batch, device):
    h, d = s["v_heads"], s["head"]
    q = torch.nn.functional.normalize(torch.randn(batch, 1, h, d, device=device), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(batch, 1, h, d, device=device), dim=-1)
    v = torch.randn(batch, 1, h, d, device=device)
    g = -torch.rand(batch, 1, h, device=device)
    beta = torch.rand(batch, 1, h, device=device)
    pool = torch.zeros(batch, h, d, d, device=device)
    return q, k, v, g, beta, torch.arange(batch, device=device), pool


def _conv_inputs(s, dtype, device):
    n, c = s["prefill"], s["channels"]
    x = torch.randn(n, c, device=device).to(dtype)
    weight = torch.randn(c, 4, device=device).to(dtype)
    pool = torch.zeros(s["batch"], c, 3, device=device).to(dtype)
    cu = torch.tensor([0, n], dtype=torch.int32, device=device)
    return x, weight, pool, cu, torch.tensor([0], device=device), torch.tensor([False], device=device)


def _extend_inputs(s, dtype, device):
    n, block = s["prefill"], 16
    kv = torch.randn(n // block, 2, block, s["kv_heads"], s["attn_dim"], device=device).to(dtype)
    tables = torch.arange(n // block, device=device, dtype=torch.int32)[None]
    q = torch.randn(n, s["q_heads"], s["attn_dim"], device=device).to(dtype)
    cu = torch.tensor([0, n], dtype=torch.int32, device=device)
    return q, kv, tables, cu, torch.zeros(1, dtype=torch.int32, device=device)


def _gdn_prefill_inputs(s, device):
    n, h, d = s["prefill"], s["v_heads"], s["head"]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q = torch.nn.functional.normalize(torch.randn(1, n, h, d, device=device), dim=-1).to(dtype)
    k = torch.nn.functional.normalize(torch.randn(1, n, h, d, device=device), dim=-1).to(dtype)
    v = torch.randn(1, n, h, d, device=device).to(dtype)
    g = -torch.rand(1, n, h, device=device) * 0.1
    beta = torch.rand(1, n, h, device=device)
    return q, k, v, g, beta
