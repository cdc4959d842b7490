"""The router and the routed experts of a sparse MoE layer, the experts without a Python loop over
experts (and without a host sync). `route` is the router of every MoE form (this module's, the
autograd one of `engine.ops.moe_autograd`).

Shapes: x `[N, H]`, top_e `[N, K]` expert ids, top_w `[N, K]` routing weights (x's dtype),
gate_up_t `[E, H, 2I]` (gate columns first, then up), down_t `[E, I, H]` → `[N, H]`:

    out[n] = sum_k top_w[n, k] * (silu(x[n] @ gate[e]) * (x[n] @ up[e])) @ down[e],   e = top_e[n, k]

Four forms with this signature:
- `moe_dense_reference`: every expert over every token, then pick each token's k outputs; no
  sorting at all, so it is an independent check of the sorted forms (and costs E/K times the work).
- `moe_grouped_torch`: (token, k) pairs sorted by expert, `torch._grouped_mm` per projection (one
  op over all experts), unsort, weighted sum. The CPU path; on CUDA, torch supports it for bf16.
- `moe_dense_torch`: every expert over every row in two batched matmuls, then the same pair sum;
  the CPU form for a few dozen rows of a small model, decode and verify steps (`dense_wins`).
  (`engine.ops.moe_autograd.experts_dense` computes the same, summing in one matmul instead; its
  rounding moves the FP8 block path's logits from its reference by >1e-5, so the forms stay two.)
- `engine.ops.triton.fused_moe.fused_moe_triton`: the GPU kernels (SiLU-and-mul and the routing
  weight fused into the GEMMs).
`routed_experts` dispatches. Expert counts are computed with `scatter_add_` rather than
`bincount` (which reads the max id back to the host on CUDA).

Expert parallelism: a rank holds E of the experts, and a pair routed to another rank's expert
carries an id >= E here ("foreign"). Every form skips foreign pairs: they add nothing and, in the
grouped and Triton forms, cost no FLOPs (they sort last, past the last expert's rows). Shapes stay
fixed, so this needs no host read either.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F

from engine.ops.dispatch import use_triton


def route(
    x: torch.Tensor, router: torch.Tensor, top_k: int, norm_topk_prob: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax (fp32) top-k router, renormalised over the k when `norm_topk_prob`: x [N, H],
    router [H, E] → top_w [N, K] fp32, top_e [N, K] global expert ids."""
    probs = torch.softmax(x @ router, dim=-1, dtype=torch.float32)
    top_w, top_e = torch.topk(probs, top_k, dim=-1)
    if norm_topk_prob:
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
    return top_w, top_e


def local_expert_ids(top_e: torch.Tensor, first_expert: int, held: int) -> torch.Tensor:
    """Global ids → ids among the `held` experts [first_expert, first_expert + held) a rank holds
    (expert parallelism); a pair routed to another rank's expert gets the id `held` (foreign).
    Shapes stay fixed (no host read-back, graph-safe)."""
    local = top_e - first_expert
    return torch.where((local >= 0) & (local < held), local, held)


def moe_dense_reference(
    x: torch.Tensor, top_e: torch.Tensor, top_w: torch.Tensor, gate_up_t: torch.Tensor, down_t: torch.Tensor
) -> torch.Tensor:
    num_experts, inter = down_t.shape[0], down_t.shape[1]
    gate, up = torch.split(torch.einsum("nh,ehi->eni", x.float(), gate_up_t.float()), inter, dim=-1)
    every = torch.einsum("eni,eih->enh", F.silu(gate) * up, down_t.float())  # [E, N, H]
    tokens = torch.arange(x.shape[0], device=x.device)[:, None]
    local = top_e < num_experts  # foreign pairs (expert parallelism) add nothing
    picked = every[top_e.clamp(max=num_experts - 1), tokens] * local.unsqueeze(-1)  # [N, K, H]
    return (picked * top_w.float().unsqueeze(-1)).sum(dim=1).to(x.dtype)


def expert_counts(top_e: torch.Tensor, num_experts: int) -> torch.Tensor:
    """[E] int64 number of (token, k) pairs routed to each expert, computed on the device. With
    ids >= E (foreign pairs: clamp them to E first) pass E + 1: the last count is theirs."""
    flat = top_e.reshape(-1)
    counts = torch.zeros(num_experts, dtype=torch.long, device=top_e.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat))


def moe_grouped_torch(
    x: torch.Tensor,
    top_e: torch.Tensor,
    top_w: torch.Tensor,
    gate_up_t: torch.Tensor,
    down_t: torch.Tensor,
    foreign: bool = False,
) -> torch.Tensor:
    """`foreign`: top_e may hold ids >= E; those pairs sort past the last group, where
    `_grouped_mm` computes nothing, and are zeroed."""
    rows, top_k = top_e.shape
    num_experts, inter = down_t.shape[0], down_t.shape[1]
    flat = top_e.reshape(-1).clamp(max=num_experts) if foreign else top_e.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = expert_counts(flat, num_experts + 1 if foreign else num_experts)[:num_experts]
    ends = counts.cumsum(0).to(torch.int32)
    sorted_x = x[order // top_k]
    gate, up = torch.split(torch._grouped_mm(sorted_x, gate_up_t, offs=ends), inter, dim=-1)
    sorted_out = torch._grouped_mm(F.silu(gate) * up, down_t, offs=ends)
    if foreign:  # rows past the last group are not computed: never read them
        sorted_out = torch.where((flat[order] < num_experts).unsqueeze(-1), sorted_out, 0)
    pairs = torch.empty_like(sorted_out)
    pairs[order] = sorted_out
    return (pairs.view(rows, top_k, -1) * top_w.unsqueeze(-1)).sum(dim=1)


# On CPU `moe_dense_torch` runs while rows x experts stays at most this and the experts are at most
# DENSE_MAX_WORK x top-k (it does E/K times the work): a few dozen rows of a small model (decode
# and verify steps). Beyond, or with hundreds of experts, the extra work loses to the grouped form.
# Measured on the benchmark model (16 experts top-4, one thread): plain decode 291 -> 308 tok/s at
# batch 1, 1,668 -> 1,885 at batch 8; a verify step's experts ~2x faster.
DENSE_MAX_ROW_EXPERTS = 512
DENSE_MAX_WORK = 8


def dense_wins(rows: int, num_experts: int, top_k: int) -> bool:
    return rows * num_experts <= DENSE_MAX_ROW_EXPERTS and num_experts <= DENSE_MAX_WORK * top_k


def moe_dense_torch(
    x: torch.Tensor,
    top_e: torch.Tensor,
    top_w: torch.Tensor,
    gate_up_t: torch.Tensor,
    down_t: torch.Tensor,
    foreign: bool = False,
) -> torch.Tensor:
    """Every expert over every row in two batched matmuls ([E, N, .]), then each row's k outputs
    weighted and summed in pair order, as `moe_grouped_torch` sums them. E/K times the FLOPs, but
    a fixed handful of ops: `torch._grouped_mm` on CPU runs a matmul per expert that has rows, so
    at small sizes its cost grows with the experts a step touches (the k + 1 rows per sequence of
    a speculative verify touch ~k + 1 times as many); this form is ~2x faster there. `foreign`:
    pairs with ids >= E add nothing."""
    rows, num_experts, inter = x.shape[0], down_t.shape[0], down_t.shape[1]
    gate, up = torch.split(torch.matmul(x.unsqueeze(0), gate_up_t), inter, dim=-1)
    every = torch.matmul(F.silu(gate) * up, down_t).view(num_experts * rows, -1)  # [E * N, H]
    if foreign:
        top_w = top_w * (top_e < num_experts)
        top_e = top_e.clamp(max=num_experts - 1)
    index = top_e * rows + torch.arange(rows, device=x.device)[:, None]  # [N, K]: row of (e, n)
    picked = every.index_select(0, index.reshape(-1)).view(rows, top_e.shape[1], -1)
    return (picked * top_w.unsqueeze(-1)).sum(dim=1)


@cache
def grouped_mm_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether `torch._grouped_mm` runs for this device kind and dtype (probed once on tiny input)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        a = torch.ones(4, 16, dtype=dtype, device=device_type)
        b = torch.ones(2, 16, 16, dtype=dtype, device=device_type)
        offs = torch.tensor([2, 4], dtype=torch.int32, device=device_type)
        return bool(torch._grouped_mm(a, b, offs=offs)[0, 0] == 16)
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def routed_experts(
    x: torch.Tensor,
    top_e: torch.Tensor,
    top_w: torch.Tensor,
    gate_up_t: torch.Tensor,
    down_t: torch.Tensor,
    foreign: bool = False,
) -> torch.Tensor:
    """The op the model calls: the Triton kernels on CUDA; on CPU `moe_dense_torch` for a few rows
    of few experts (`dense_wins`), else `torch._grouped_mm` (the dense reference where this torch
    lacks it: correct, E/K times the work). `foreign`: top_e may hold ids >= E, pairs of experts
    another rank holds, which are skipped (expert parallelism)."""
    if use_triton(x):
        from engine.ops.triton.fused_moe import fused_moe_triton  # cycle: it imports this module

        return fused_moe_triton(x, top_e, top_w, gate_up_t, down_t, foreign)
    if dense_wins(x.shape[0], down_t.shape[0], top_e.shape[1]):
        return moe_dense_torch(x, top_e, top_w, gate_up_t, down_t, foreign)
    if grouped_mm_supported(x.device.type, x.dtype):
        return moe_grouped_torch(x, top_e, top_w, gate_up_t, down_t, foreign)
    return moe_dense_reference(x, top_e, top_w, gate_up_t, down_t)
