"""`ForwardBatch`: the index tensors one forward over a mixed batch needs, built once per step.

Rows of the flattened token matrix are ordered decode tokens first (one per decoding sequence,
so they batch into single ops), then speculative-verify chunks (a chunk with `step_slots`: the
DeltaNet state after each of its rows goes to its own slot), then each prefill chunk's tokens
contiguously. Attention treats verify rows like decode rows (each attends to its own prefix).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.models.step_metadata import MetadataUploader
from engine.ops.dispatch import use_triton


@dataclass(frozen=True, slots=True)
class PrefillSpan:
    """One prefill chunk: its rows [row_start, row_end) and where it sits in its sequence."""

    row_start: int
    row_end: int
    start_pos: int
    state_slot: int
    pages: torch.Tensor  # [ceil((start_pos + len) / block_size)] long: pages covering its context


@dataclass(frozen=True, slots=True)
class PrefillMeta:
    """All prefill chunks as device tensors, for the varlen Triton kernels (built only when they
    run: see `engine.ops.dispatch.use_triton`). Prefill rows are [row_start, num_tokens)."""

    row_start: int
    cu_seqlens: torch.Tensor  # [S+1] int32, relative to row_start
    start_pos: torch.Tensor  # [S] int32
    block_tables: torch.Tensor  # [S, max_pages] int32 (padding 0, never read)
    slots: torch.Tensor  # [S] long
    has_state: torch.Tensor  # [S] bool: start_pos > 0
    max_len: int  # longest chunk (sizes the grids)


@dataclass(frozen=True, slots=True)
class VerifyGroup:
    """Verify chunks of equal length T, rows [row_start, row_start + V * T), chunk by chunk."""

    row_start: int
    steps: int  # T
    step_slots: torch.Tensor  # [V, T] long: slot receiving the state after each row (col 0 = live)


@dataclass(frozen=True, slots=True)
class ForwardBatch:
    token_ids: torch.Tensor  # [N] long, in row order
    positions: torch.Tensor  # [N] long
    write_pages: torch.Tensor  # [N] long: page receiving each row's KV
    write_offsets: torch.Tensor  # [N] long: offset inside that page
    num_decode: int  # rows [0, num_decode) are decode tokens
    decode_slots: torch.Tensor  # [num_decode] long state slots
    decode_block_tables: torch.Tensor  # [num_decode, max_blocks] int32
    decode_context_lens: torch.Tensor  # [num_decode] int32 (including the new token)
    prefills: tuple[PrefillSpan, ...]
    chunk_rows: list[tuple[int, int]]  # per input chunk (in input order): its rows [start, end)
    # Speculative verify rows follow the decode rows; decode_block_tables / decode_context_lens
    # cover them too (attention rows [0, num_decode + num_verify_rows)).
    num_verify_rows: int = 0
    verify_groups: tuple[VerifyGroup, ...] = ()
    last_rows: torch.Tensor | None = None  # [len(chunks)] long: each chunk's last row, input order
    prefill_meta: PrefillMeta | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])


def build_forward_batch(
    chunks: list,
    block_size: int,
    num_pages: int,
    num_slots: int,
    device: torch.device,
    uploader: MetadataUploader | None = None,
) -> ForwardBatch:
    """Validate the chunks (see `engine.model_runner.SeqChunk`) and lay out their rows. Every
    index tensor is planned on the host and reaches the device in one copy (`uploader`)."""
    if not chunks:
        raise ValueError("forward needs at least one chunk")
    validate_chunks(chunks, block_size, num_pages, num_slots)
    decode = [
        i
        for i, c in enumerate(chunks)
        if len(c.token_ids) == 1 and c.start_pos > 0 and _step_slots(c) is None
    ]
    verify = sorted(
        (i for i, c in enumerate(chunks) if _step_slots(c) is not None),
        key=lambda i: len(chunks[i].token_ids),
    )
    decode_set = set(decode)
    attend_set = decode_set | set(verify)
    prefill = [i for i in range(len(chunks)) if i not in attend_set]
    tokens: list[int] = []
    positions: list[int] = []
    write_pages: list[int] = []
    chunk_rows: list[tuple[int, int]] = [(0, 0)] * len(chunks)
    spans: list[tuple[int, int, int, int, torch.Tensor]] = []
    attend_rows: list[tuple[int, int]] = []  # (chunk index, context length) per attention-decode row
    for i in decode + verify + prefill:
        c = chunks[i]
        start = len(tokens)
        chunk_positions = range(c.start_pos, c.start_pos + len(c.token_ids))
        tokens.extend(c.token_ids)
        positions.extend(chunk_positions)
        write_pages.extend(c.block_table[p // block_size] for p in chunk_positions)
        chunk_rows[i] = (start, len(tokens))
        if i in attend_set:
            attend_rows.extend((i, p + 1) for p in chunk_positions)
        else:
            needed = -(-chunk_positions.stop // block_size)
            pages = torch.tensor(c.block_table[:needed], dtype=torch.long)
            spans.append((start, len(tokens), c.start_pos, c.state_slot, pages))
    pos = torch.tensor(positions, dtype=torch.long)
    # Table width = the blocks the longest attending row needs: the planned bound kernels size by.
    max_blocks = max((-(-n // block_size) for _, n in attend_rows), default=1)
    padded = []  # one host list → one tensor (a tensor per row cost ~4 us each, 3x per verify row)
    for i, n in attend_rows:
        needed = -(-n // block_size)
        padded.append([*chunks[i].block_table[:needed], *[0] * (max_blocks - needed)])
    decode_tables = torch.tensor(padded, dtype=torch.int32).view(len(attend_rows), max_blocks)
    verify_slots = _verify_slot_tables(chunks, verify)
    host = [
        torch.tensor(tokens, dtype=torch.long),
        pos,
        torch.tensor(write_pages, dtype=torch.long),
        pos % block_size,
        torch.tensor([chunks[i].state_slot for i in decode], dtype=torch.long),
        decode_tables,
        torch.tensor([n for _, n in attend_rows], dtype=torch.int32),
        torch.tensor([end - 1 for _, end in chunk_rows], dtype=torch.long),
        *(span[4] for span in spans),
        *verify_slots,
    ]
    on_device = uploader.upload(host) if uploader is not None else [t.to(device) for t in host]
    token_ids, positions_d, pages_d, offsets_d, slots_d, tables_d, lens_d = on_device[:7]
    last_rows = on_device[7]
    span_pages = on_device[8 : 8 + len(spans)]
    prefill_spans = tuple(
        PrefillSpan(s, e, start_pos, slot, pages)
        for (s, e, start_pos, slot, _), pages in zip(spans, span_pages, strict=True)
    )
    return ForwardBatch(
        token_ids=token_ids,
        positions=positions_d,
        write_pages=pages_d,
        write_offsets=offsets_d,
        num_decode=len(decode),
        decode_slots=slots_d,
        decode_block_tables=tables_d,
        decode_context_lens=lens_d,
        prefills=prefill_spans,
        chunk_rows=chunk_rows,
        num_verify_rows=sum(len(chunks[i].token_ids) for i in verify),
        verify_groups=_verify_groups(chunks, verify, len(decode), on_device[8 + len(spans) :]),
        last_rows=last_rows,
        prefill_meta=_prefill_meta(chunks, prefill, prefill_spans, device)
        if prefill_spans and use_triton(device)
        else None,
    )


def _prefill_meta(chunks: list, prefill: list[int], spans: list[PrefillSpan], device) -> PrefillMeta:
    lengths = [span.row_end - span.row_start for span in spans]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    width = max(span.pages.shape[0] for span in spans)
    tables = torch.zeros(len(spans), width, dtype=torch.int32)
    for row, i in enumerate(prefill):
        needed = spans[row].pages.shape[0]
        tables[row, :needed] = torch.tensor(chunks[i].block_table[:needed], dtype=torch.int32)
    return PrefillMeta(
        row_start=spans[0].row_start,
        cu_seqlens=torch.tensor(cu, dtype=torch.int32).to(device),
        start_pos=torch.tensor([s.start_pos for s in spans], dtype=torch.int32).to(device),
        block_tables=tables.to(device),
        slots=torch.tensor([s.state_slot for s in spans], dtype=torch.long).to(device),
        has_state=torch.tensor([s.start_pos > 0 for s in spans]).to(device),
        max_len=max(lengths),
    )


def _step_slots(chunk) -> list[int] | None:
    return getattr(chunk, "step_slots", None)


def _verify_slot_tables(chunks: list, verify: list[int]) -> list[torch.Tensor]:
    """Per group of equal-length verify chunks (sorted by length): its [V, T] step-slot table."""
    tables = []
    index = 0
    while index < len(verify):
        steps = len(chunks[verify[index]].token_ids)
        members = [i for i in verify[index:] if len(chunks[i].token_ids) == steps]
        tables.append(torch.tensor([_step_slots(chunks[i]) for i in members], dtype=torch.long))
        index += len(members)
    return tables


def _verify_groups(chunks: list, verify: list[int], row_start: int, slot_tables: list) -> tuple:
    """Consecutive verify chunks (sorted by length) grouped by length, so each group runs batched."""
    groups = []
    for slots in slot_tables:
        steps = slots.shape[1]
        groups.append(VerifyGroup(row_start, steps, slots))
        row_start += steps * slots.shape[0]
    return tuple(groups)


def validate_chunks(chunks: list, block_size: int, num_pages: int, num_slots: int) -> None:
    """Raise ValueError on chunks that do not fit the cache (host-side checks only)."""
    slots = [c.state_slot for c in chunks]
    for c in chunks:
        step_slots = _step_slots(c)
        if step_slots is not None:
            if len(step_slots) != len(c.token_ids) or step_slots[0] != c.state_slot or c.start_pos == 0:
                raise ValueError(
                    "a verify chunk needs start_pos > 0 and one step slot per token, the first being "
                    f"its state slot; got {len(step_slots)} slots for {len(c.token_ids)} tokens"
                )
            slots.extend(step_slots[1:])
            if not all(0 <= s < num_slots for s in step_slots):
                raise ValueError(f"step slots {step_slots} out of range [0, {num_slots})")
    if len(set(slots)) != len(slots):
        raise ValueError(f"two chunks of one forward share a state slot: {slots}")
    for c in chunks:
        if not c.token_ids:
            raise ValueError("a chunk needs at least one token")
        if c.start_pos < 0:
            raise ValueError(f"start_pos must be >= 0, got {c.start_pos}")
        if not 0 <= c.state_slot < num_slots:
            raise ValueError(f"state slot {c.state_slot} out of range [0, {num_slots})")
        needed = -(-(c.start_pos + len(c.token_ids)) // block_size)
        if len(c.block_table) < needed:
            raise ValueError(
                f"block_table has {len(c.block_table)} pages, positions up to "
                f"{c.start_pos + len(c.token_ids)} need {needed} (block_size {block_size})"
            )
        bad = [p for p in c.block_table[:needed] if not 0 <= p < num_pages]
        if bad:
            raise ValueError(f"block_table references pages {bad} outside [0, {num_pages})")
