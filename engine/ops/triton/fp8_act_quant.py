"""Per-token-group FP8 activation quantization as one Triton kernel (the fused form of
`engine.ops.fp8.quantize_activation_fp8`, its torch reference).

`x [M, K]` → float8_e4m3fn `[M, K]` and fp32 scales `[M, ceil(K / group)]`: one program per (16 rows,
group) loads the rows' group, takes its largest magnitude, scale = max(amax, 1e-12) / 448, stores x / scale
(clamped to ±448) as e4m3 and the scale. On a GPU this is one launch per linear where the torch form
takes about nine (pad, abs, amax, clamp, divide, repeat, divide, clamp, cast).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.ops.fp8 import FP8_DTYPE, FP8_MAX


@triton.jit
def _round_to_e4m3(q):
    """`q` (|q| <= 448) rounded to the nearest e4m3 value, ties to even, in fp32 arithmetic: the
    cast that follows is then exact. (Triton's interpreter rounds fp32 -> e4m3 wrongly where
    rounding up carries into the next power of two, 124.9 -> 64; the GPU's cvt is right either way.)
    The e4m3 step at |q| is 2^(e - 3), e = max(exponent of |q|, -6) (subnormals below 2^-6);
    adding and subtracting 1.5 * 2^23 rounds |q| / step (< 16) to an integer, ties to even."""
    a = tl.abs(q)
    exponent = tl.maximum((a.to(tl.int32, bitcast=True) >> 23) - 127, -6)
    step = ((exponent - 3 + 127) << 23).to(tl.float32, bitcast=True)
    inverse_step = ((3 - exponent + 127) << 23).to(tl.float32, bitcast=True)  # powers of 2: exact
    rounded = ((a * inverse_step + 12582912.0) - 12582912.0) * step
    sign = q.to(tl.int32, bitcast=True) & -2147483648  # keeps -0.0 as torch's cast does
    return (rounded.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def _act_quant_kernel(
    x_ptr,
    q_ptr,
    s_ptr,
    M,
    K,
    stride_xm,
    stride_qm,
    stride_sm,
    GROUP: tl.constexpr,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    FMAX: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    group = tl.program_id(1)
    cols = group * GROUP + tl.arange(0, BLOCK)
    row_ok = rows < M
    ok = row_ok[:, None] & ((tl.arange(0, BLOCK) < GROUP) & (cols < K))[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=1)
    # IEEE divisions (`/` on a GPU is the approximate div.full.f32): bitwise the torch reference's.
    scale = tl.div_rn(tl.maximum(amax, 1e-12), FMAX)
    q = _round_to_e4m3(tl.clamp(tl.div_rn(x, scale[:, None]), -FMAX, FMAX))
    tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], q.to(q_ptr.dtype.element_ty), mask=ok)
    tl.store(s_ptr + rows * stride_sm + group, scale, mask=row_ok)


def quantize_activation_fp8_triton(
    x: torch.Tensor, group: int, rows_per_program: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `quantize_activation_fp8` (module doc); one program per `rows_per_program`
    rows x one group."""
    if x.dim() != 2:
        raise ValueError(f"x must be [M, K], got {tuple(x.shape)}")
    x = x.contiguous()
    m, k = x.shape
    groups = triton.cdiv(k, group)
    q = torch.empty(m, k, dtype=FP8_DTYPE, device=x.device)
    scale = torch.empty(m, groups, dtype=torch.float32, device=x.device)
    if m == 0:
        return q, scale
    _act_quant_kernel[(triton.cdiv(m, rows_per_program), groups)](
        x, q, scale, m, k, x.stride(0), q.stride(0), scale.stride(0),
        GROUP=group, BLOCK=triton.next_power_of_2(group), ROWS=rows_per_program, FMAX=FP8_MAX,
    )  # fmt: skip
    return q, scale
