"""`ForwardBatch`: the index tensors one forward over a mixed batch needs, built once per step.

Rows of the flattened token matrix are ordered decode tokens first (one per decoding sequence,
so they batch into single ops), then each prefill chunk's tokens contiguously.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class PrefillSpan:
    """One prefill chunk: its rows [row_start, row_end) and where it sits in its sequence."""

    row_start: int
    row_end: int
    start_pos: int
    state_slot: int
    pages: torch.Tensor  # [ceil((start_pos + len) / block_size)] long: pages covering its context


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

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])


def build_forward_batch(
    chunks: list, block_size: int, num_pages: int, num_slots: int, device: torch.device
) -> ForwardBatch:
    """Validate the chunks (see `engine.model_runner.SeqChunk`) and lay out their rows."""
    if not chunks:
        raise ValueError("forward needs at least one chunk")
    _validate(chunks, block_size, num_pages, num_slots)
    decode = [i for i, c in enumerate(chunks) if len(c.token_ids) == 1 and c.start_pos > 0]
    decode_set = set(decode)
    prefill = [i for i in range(len(chunks)) if i not in decode_set]
    tokens: list[int] = []
    positions: list[int] = []
    write_pages: list[int] = []
    chunk_rows: list[tuple[int, int]] = [(0, 0)] * len(chunks)
    spans: list[PrefillSpan] = []
    for i in decode + prefill:
        c = chunks[i]
        start = len(tokens)
        chunk_positions = range(c.start_pos, c.start_pos + len(c.token_ids))
        tokens.extend(c.token_ids)
        positions.extend(chunk_positions)
        write_pages.extend(c.block_table[p // block_size] for p in chunk_positions)
        chunk_rows[i] = (start, len(tokens))
        if i not in decode_set:
            needed = -(-chunk_positions.stop // block_size)
            pages = torch.tensor(c.block_table[:needed], dtype=torch.long, device=device)
            spans.append(PrefillSpan(start, len(tokens), c.start_pos, c.state_slot, pages))
    pos = torch.tensor(positions, dtype=torch.long)
    max_blocks = max((len(chunks[i].block_table) for i in decode), default=0)
    decode_tables = torch.full((len(decode), max(max_blocks, 1)), 0, dtype=torch.int32)
    for row, i in enumerate(decode):
        table = chunks[i].block_table
        decode_tables[row, : len(table)] = torch.tensor(table, dtype=torch.int32)
    return ForwardBatch(
        token_ids=torch.tensor(tokens, dtype=torch.long, device=device),
        positions=pos.to(device),
        write_pages=torch.tensor(write_pages, dtype=torch.long, device=device),
        write_offsets=(pos % block_size).to(device),
        num_decode=len(decode),
        decode_slots=torch.tensor([chunks[i].state_slot for i in decode], dtype=torch.long, device=device),
        decode_block_tables=decode_tables.to(device),
        decode_context_lens=torch.tensor(
            [chunks[i].start_pos + 1 for i in decode], dtype=torch.int32, device=device
        ),
        prefills=tuple(spans),
        chunk_rows=chunk_rows,
    )


def _validate(chunks: list, block_size: int, num_pages: int, num_slots: int) -> None:
    slots = [c.state_slot for c in chunks]
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
