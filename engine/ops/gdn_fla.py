"""fla-core's chunked gated delta rule as an optional GPU path for GDN prefill.

fla-core is not a dependency: it is imported only on CUDA tensors, only if installed (never
install it in a CPU environment: transformers then routes its CPU forward to Triton and fails, and
fla's kernels fail under TRITON_INTERPRET=1). Same signature as `engine.ops.gdn_naive.gated_delta_rule`
(q, k already L2-normed; q scaled by Dk**-0.5 inside, fla's default scale).
"""

from __future__ import annotations

import importlib.util
from functools import cache

import torch


@cache
def fla_available() -> bool:
    return importlib.util.find_spec("fla") is not None


def fla_chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`cu_seqlens` [S+1]: B = 1 holds S sequences packed along T (fla's varlen mode), and
    initial_state / the returned state are [S, H, Dk, Dv]."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule  # optional: fla-core, GPU only

    dtype = v.dtype
    out, state = chunk_gated_delta_rule(
        q.to(dtype),
        k.to(dtype),
        v,
        g=g.float(),
        beta=beta.to(dtype),
        initial_state=None if initial_state is None else initial_state.float(),
        output_final_state=True,
        cu_seqlens=None if cu_seqlens is None else cu_seqlens.long(),
    )
    return out.to(dtype), state.float()
