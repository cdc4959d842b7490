"""The MTP layer's attention over every drafting sequence's cached MTP KV, in one call.

Each sequence keeps its own dense `MtpKv` ([layers, capacity, 2, Hkv, D] by position); a draft
forward carries a few new rows per sequence (`CachedGroup`). The new rows' K/V are written into
each sequence's cache (one slice write per sequence), then all sequences attend in ONE scaled-dot-
product call over their caches padded to the longest one, with a mask that lets query t of a group
see its cache entries [0, lo + t] (lo: the group's first entry). The per-sequence form it replaces
(`chunk_causal_attention` per group) cost a dozen ops per sequence per draft step; this is a fixed
handful plus one write and one view per sequence. The caches are sliced to a common length and
stacked (a cache shorter than that grows first, as `MtpKv.ensure` grows it anyway). With a
`StackedCaches` (the head keeps one) the stack is kept between calls and each sequence's cache
becomes a view of its row, so the calls of the same sequences (every draft step, and steps until
a sequence joins, leaves or grows) attend to it as is, without copying every cache each call.
`cached_attention_reference` is that per-group form, kept as the reference the tests hold this one to.

Group boundaries and first positions come from the host (`CachedGroup.first_pos`), so nothing
here reads a device value back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.ops.attention import chunk_causal_attention


@dataclass(frozen=True, slots=True)
class CachedGroup:
    kv: object  # the sequence's MtpKv
    row_start: int
    row_end: int
    first_pos: int  # position of row_start (rows are at consecutive positions)


class StackedCaches:
    """The caches of the last drafting sequences as rows of one tensor [B, layers, capacity, 2,
    Hkv, D]; each sequence's `MtpKv.data` is a view of its row, so writes through either are seen
    by both. Rebuilt (one copy of every cache, as an unkept stack costs every call) when the
    sequences or their order change or a cache grew (`MtpKv.ensure` replaced its data)."""

    def __init__(self) -> None:
        self.data: torch.Tensor | None = None
        self.kvs: list = []
        self.views: list[torch.Tensor] = []

    def rows(self, groups: list[CachedGroup]) -> torch.Tensor:
        kvs = [g.kv for g in groups]
        kept = len(kvs) == len(self.kvs) and all(
            kv is old and kv.data is view for kv, old, view in zip(kvs, self.kvs, self.views, strict=True)
        )
        if not kept:
            self._rebuild(kvs)
        return self.data

    def _rebuild(self, kvs: list) -> None:
        capacity = max(kv.data.shape[1] for kv in kvs)
        first = kvs[0].data
        data = first.new_zeros((len(kvs), first.shape[0], capacity, *first.shape[2:]))
        for row, kv in enumerate(kvs):
            data[row, :, : kv.data.shape[1]] = kv.data
            kv.data = data[row]
        self.data, self.kvs, self.views = data, kvs, [kv.data for kv in kvs]


def cached_attention(
    layer: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    groups: list[CachedGroup],
    scale: float,
    stacked: StackedCaches | None = None,
    last_only: bool = False,
) -> torch.Tensor:
    """q [N, Hq, D], k, v [N, Hkv, D] (rows of `groups`, in order, covering [0, N)) → [N, Hq, D].
    `stacked`: the stack kept between calls (see `StackedCaches`). `last_only`: q holds only each
    group's last row ([len(groups), Hq, D], the output's rows); every row's K/V is still written."""
    rows, heads, dim = q.shape
    if len(groups) == 1:  # one sequence: its cache as is, no padding
        return _one_sequence(layer, q, k, v, groups[0], scale)
    new_kv = torch.stack([k, v], dim=1)  # [N, 2, Hkv, D]
    lows = [g.first_pos - g.kv.valid_from for g in groups]
    counts = [g.row_end - g.row_start for g in groups]
    queries = [1] * len(groups) if last_only else counts
    length = max(lo + c for lo, c in zip(lows, counts, strict=True))
    for g in groups:
        if g.kv.data.shape[1] < length:  # room to slice every cache to `length` (grows rarely)
            g.kv.ensure(g.kv.valid_from + length)
    if stacked is not None:  # the kept stack: the new entries in one indexed write, no copy
        layer_view = stacked.rows(groups)[:, layer]  # [B, capacity, 2, Hkv, D]
        owners = [b for b, c in enumerate(counts) for _ in range(c)]
        entries = [lo + t for lo, c in zip(lows, counts, strict=True) for t in range(c)]
        index = torch.tensor([owners, entries], device=q.device)
        layer_view.index_put_((index[0], index[1]), new_kv.to(layer_view.dtype))
        cache = layer_view[:, :length].to(q.dtype)  # [B, L, 2, Hkv, D]
    else:
        caches = [g.kv.data[layer] for g in groups]
        # Each sequence's new entries into its cache, in one multi-tensor copy.
        torch._foreach_copy_(
            [c.narrow(0, lo, count) for c, lo, count in zip(caches, lows, counts, strict=True)],
            list(new_kv.split(counts)),
        )
        # Every cache sliced to the longest one's entries, in one stack (entries past a
        # sequence's own are stale or zero, and masked below): no padding fill.
        cache = torch.stack([c[:length] for c in caches]).to(q.dtype)
    num, steps = len(groups), max(queries)
    uniform = all(c == steps for c in queries)
    if uniform:
        q_pad = q.view(num, steps, heads, dim)
    else:  # scatter the rows into [B, T, ...]; padding rows attend to entry 0 and are dropped
        index = torch.tensor(
            [b * steps + t for b, c in enumerate(queries) for t in range(c)], device=q.device
        )
        q_pad = q.new_zeros(num * steps, heads, dim).index_copy_(0, index, q).view(num, steps, heads, dim)
    last_key = torch.tensor(
        [
            [lo + c - n + min(t, n - 1) for t in range(steps)]
            for lo, c, n in zip(lows, counts, queries, strict=True)
        ],
        device=q.device,
    )  # [B, T]: the group's query t (of n) sees entries [0, lo + c - n + t]
    mask = torch.arange(length, device=q.device)[None, None, :] <= last_key[:, :, None]  # [B, T, L]
    out = F.scaled_dot_product_attention(
        q_pad.transpose(1, 2),
        cache[:, :, 0].transpose(1, 2),
        cache[:, :, 1].transpose(1, 2),
        attn_mask=mask[:, None],
        scale=scale,
        enable_gqa=True,
    ).transpose(1, 2)  # [B, T, Hq, D]
    if uniform:
        return out.reshape(rows, heads, dim)
    return out.reshape(num * steps, heads, dim).index_select(0, index)


def _one_sequence(layer: int, q, k, v, g: CachedGroup, scale: float) -> torch.Tensor:
    lo = g.first_pos - g.kv.valid_from
    hi = lo + g.row_end - g.row_start
    g.kv.data[layer, lo:hi] = torch.stack([k, v], dim=1).to(g.kv.data.dtype)
    cache = g.kv.data[layer, :hi].to(q.dtype)
    mask = None
    queries = q.shape[0]  # the group's last `queries` rows (all of them, or the last one)
    if queries > 1:  # query t sees entries [0, hi - queries + t]
        mask = torch.ones(queries, hi, dtype=torch.bool, device=q.device).tril(hi - queries)
    return F.scaled_dot_product_attention(
        q.transpose(0, 1),
        cache[:, 0].transpose(0, 1),
        cache[:, 1].transpose(0, 1),
        attn_mask=mask,
        scale=scale,
        enable_gqa=True,
    ).transpose(0, 1)


def cached_attention_reference(
    layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: list[CachedGroup], scale: float
) -> torch.Tensor:
    """The per-group form: write each group's K/V, then causal attention over its cache."""
    outs = []
    for g in groups:
        s, e = g.row_start, g.row_end
        lo = g.first_pos - g.kv.valid_from
        hi = lo + e - s
        g.kv.data[layer, lo:hi, 0] = k[s:e].to(g.kv.data.dtype)
        g.kv.data[layer, lo:hi, 1] = v[s:e].to(g.kv.data.dtype)
        keys, values = g.kv.data[layer, :hi, 0].to(q.dtype), g.kv.data[layer, :hi, 1].to(q.dtype)
        outs.append(chunk_causal_attention(q[s:e], keys, values, lo, scale))
    return torch.cat(outs)
