"""Triton GPU kernels behind the engine/ops interface; the tests run them under TRITON_INTERPRET=1.

Each kernel has a plain-torch reference it is tested against: `paged_attention_decode` against
`engine.ops.paged_attention.paged_attention_reference`, `gdn_decode_step` against
`engine.ops.gdn_naive.gated_delta_rule` with T = 1.
"""

from engine.ops.triton.gdn_decode import gdn_decode_step
from engine.ops.triton.paged_attention import paged_attention_decode, paged_attention_triton

__all__ = ["gdn_decode_step", "paged_attention_decode", "paged_attention_triton"]
