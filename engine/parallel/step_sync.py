"""Rank 0 schedules; every rank runs the same step on its shard.

Rank 0's `LeaderRunner.forward` first broadcasts the step: a fixed 8-int64 header (op, counts,
flags) and then, for a forward, one int64 payload holding every chunk
([n_tokens, start_pos, n_pages, state_slot, n_step_slots (-1: none), watch_key, tokens, pages,
step slots]).
Tensors, not pickles. State copies and resets the prefix cache and block manager make on rank 0
(`MirroredCache`) are broadcast the same way, so every rank's slots hold the same positions and the
page and slot ids rank 0 chose: one radix tree. Followers (`follow`) loop on the header until STOP.

What the engine does not interpret goes to the `FollowerHooks` a follower process was started
with (the worker's KV transfer): `call_followers` broadcasts opaque bytes (OP_CALL), each follower's
`hooks.call` answers, and the replies are gathered back to rank 0; it runs between steps, on the
thread that broadcasts them, so its collectives never interleave with a step's. A chunk whose
sequence rank 0 watches layer by layer carries a `watch_key` (`watch_key(request_id)`), and
followers call `hooks.layer_done` for it after each layer, as rank 0 calls the sequence's callback.

Ops from 10 on are the speculative path's (`engine/parallel/spec_sync.py`): the verify forward
(`forward_hidden`), the lm head over rows of it, and the MTP head's calls; `follow` hands them to
the handlers it is given.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist

from engine.cache.tensors import CacheTensors
from engine.model_runner import ModelRunner, SeqChunk
from engine.parallel.comm import Comm

log = logging.getLogger(__name__)
HEADER = 8
OP_INIT, OP_FORWARD, OP_COPY_STATE, OP_ZERO_STATE, OP_STOP, OP_CALL = 1, 2, 3, 4, 5, 6


class FollowerHooks(Protocol):
    """What a follower rank runs beside its steps (the worker supplies them)."""

    def call(self, runner: ModelRunner, payload: bytes) -> bytes:
        """Answer one `call_followers` payload."""

    def layer_done(self, runner: ModelRunner, chunk: SeqChunk, layer: int) -> None:
        """`layer` has written `chunk` (a watched sequence's) into this rank's cache."""


def watch_key(request_id: str) -> int:
    """The 62-bit key a watched sequence is known by on every rank."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little") >> 2
# Speculative decoding (spec_sync.py): [op, n_chunks, payload] / [op, n_rows] / MTP head calls.
OP_FORWARD_HIDDEN, OP_HIDDEN_LOGITS, OP_MTP_FORWARD, OP_MTP_LOGITS = 10, 11, 12, 13

# A follower's handler of an op from 10 on: (its runner, the op's header).
OpHandler = Callable[[ModelRunner, list[int]], None]


def encode_chunks(chunks: list[SeqChunk]) -> torch.Tensor:
    ints: list[int] = []
    for c in chunks:
        steps = c.step_slots if c.step_slots is not None else []
        ints += [len(c.token_ids), c.start_pos, len(c.block_table), c.state_slot]
        ints.append(len(steps) if c.step_slots is not None else -1)
        ints.append(c.watch_key)
        ints += list(c.token_ids) + list(c.block_table) + list(steps)
    return torch.tensor(ints, dtype=torch.int64)


def decode_chunks(payload: torch.Tensor, count: int) -> list[SeqChunk]:
    ints = payload.tolist()
    chunks, at = [], 0
    for _ in range(count):
        n, start, pages, slot, steps, key = ints[at : at + 6]
        at += 6
        tokens = ints[at : at + n]
        table = ints[at + n : at + n + pages]
        at += n + pages
        step_slots = None
        if steps >= 0:
            step_slots = ints[at : at + steps]
            at += steps
        chunks.append(SeqChunk(tokens, start, table, slot, step_slots, key))
    return chunks


def _send_header(comm: Comm, *values: int) -> None:
    header = torch.zeros(HEADER, dtype=torch.int64)
    header[: len(values)] = torch.tensor(values, dtype=torch.int64)
    comm.broadcast(header.to(comm.device))


def send_init(comm: Comm, num_pages: int, num_slots: int) -> None:
    """The cache sizes rank 0 chose: every rank allocates the same page and slot ids."""
    _send_header(comm, OP_INIT, num_pages, num_slots)


def send_stop(comm: Comm) -> None:
    _send_header(comm, OP_STOP)


def call_followers(comm: Comm, payload: bytes) -> list[bytes]:
    """Rank 0: every follower's reply to `payload`, in rank order (ranks 1..N-1)."""
    _send_header(comm, OP_CALL, len(payload))
    comm.broadcast(_to_tensor(payload, comm.device))
    return _gather_bytes(comm, b"")[1:]


def _to_tensor(data: bytes, device: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if data else torch.zeros(
        0, dtype=torch.uint8, device=device
    )


def _gather_bytes(comm: Comm, mine: bytes) -> list[bytes]:
    """Every rank's `mine`, in rank order (variable lengths: sizes first, then padded bytes)."""
    size = torch.tensor([len(mine)], dtype=torch.int64, device=comm.device)
    sizes = [torch.zeros_like(size) for _ in range(comm.world_size)]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=comm.device)
    padded[: len(mine)] = _to_tensor(mine, comm.device)
    parts = [torch.zeros_like(padded) for _ in range(comm.world_size)]
    dist.all_gather(parts, padded)
    return [p[: int(n.item())].cpu().numpy().tobytes() for p, n in zip(parts, sizes, strict=True)]


class LeaderRunner(ModelRunner):
    """Rank 0's runner: broadcasts each step before running its own shard of it."""

    def __init__(self, model, cache: CacheTensors, comm: Comm) -> None:
        super().__init__(model, cache)
        self.comm = comm

    def forward(
        self, chunks: list[SeqChunk], *, all_logits: bool = False, layer_callback=None
    ) -> torch.Tensor:
        vocab = self.model.config.vocab_size
        for chunk in chunks:  # refuse before the followers start a step
            if any(not 0 <= t < vocab for t in chunk.token_ids):
                raise ValueError(f"token ids must lie in [0, {vocab})")
        payload = encode_chunks(chunks)
        _send_header(self.comm, OP_FORWARD, len(chunks), payload.numel(), int(all_logits))
        self.comm.broadcast(payload.to(self.comm.device))
        return super().forward(chunks, all_logits=all_logits, layer_callback=layer_callback)

    def forward_hidden(self, chunks: list[SeqChunk], layer_callback=None):
        """The speculative step's forward: followers run it too and keep its hidden rows."""
        self._send_chunks(OP_FORWARD_HIDDEN, chunks)
        return super().forward_hidden(chunks, layer_callback)

    def hidden_logits(self, hidden: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """Followers project the same rows of their last `forward_hidden` (the lm head gathers)."""
        _send_header(self.comm, OP_HIDDEN_LOGITS, len(rows))
        if rows:
            self.comm.broadcast(torch.tensor(rows, dtype=torch.int64, device=self.comm.device))
        return super().hidden_logits(hidden, rows)

    def _send_chunks(self, op: int, chunks: list[SeqChunk]) -> None:
        """`forward`'s broadcast, for the ops from 10 on (`receive_chunks` is the other side)."""
        vocab = self.model.config.vocab_size
        for chunk in chunks:  # refuse before the followers start a step
            if any(not 0 <= t < vocab for t in chunk.token_ids):
                raise ValueError(f"token ids must lie in [0, {vocab})")
        payload = encode_chunks(chunks)
        _send_header(self.comm, op, len(chunks), payload.numel())
        self.comm.broadcast(payload.to(self.comm.device))


@dataclass(eq=False)
class MirroredCache(CacheTensors):
    """Rank 0's cache: state copies and resets go to every rank first."""

    comm: Comm | None = None

    def copy_state(self, src_slot: int, dst_slot: int) -> None:
        _send_header(self.comm, OP_COPY_STATE, src_slot, dst_slot)
        super().copy_state(src_slot, dst_slot)

    def zero_state(self, slot: int) -> None:
        _send_header(self.comm, OP_ZERO_STATE, slot)
        super().zero_state(slot)


def mirrored(cache: CacheTensors, comm: Comm) -> MirroredCache:
    return MirroredCache(kv=cache.kv, conv=cache.conv, ssm=cache.ssm, block_size=cache.block_size, comm=comm)


def receive_chunks(comm: Comm, header: list[int]) -> list[SeqChunk]:
    """The chunks a `_send_chunks` header announces ([op, n_chunks, payload length, ...])."""
    payload = comm.broadcast(torch.zeros(header[2], dtype=torch.int64, device=comm.device))
    return decode_chunks(payload.cpu(), header[1])


def follow(
    comm: Comm,
    make_runner: Callable[[int, int], ModelRunner],
    handlers: Mapping[int, OpHandler] | None = None,
    hooks: FollowerHooks | None = None,
) -> int:
    """A follower rank's loop: INIT (allocate via `make_runner(num_pages, num_slots)`), then
    steps until STOP; ops from 10 on go to `handlers` (spec_sync.SpecFollower.handlers). Returns
    the number of forwards run."""
    handlers = handlers or {}
    runner: ModelRunner | None = None
    forwards = 0
    while True:
        header = comm.broadcast(torch.zeros(HEADER, dtype=torch.int64, device=comm.device)).tolist()
        op = header[0]
        if op == OP_INIT:
            runner = make_runner(header[1], header[2])
        elif op == OP_FORWARD:
            payload = comm.broadcast(torch.zeros(header[2], dtype=torch.int64, device=comm.device))
            chunks = decode_chunks(payload.cpu(), header[1])
            runner.forward(chunks, all_logits=bool(header[3]), layer_callback=_watchers(hooks, runner, chunks))
            forwards += 1
        elif op == OP_COPY_STATE:
            runner.cache.copy_state(header[1], header[2])
        elif op == OP_ZERO_STATE:
            runner.cache.zero_state(header[1])
        elif op == OP_CALL:
            payload = comm.broadcast(torch.zeros(header[1], dtype=torch.uint8, device=comm.device))
            _gather_bytes(comm, _answer(hooks, runner, payload.cpu().numpy().tobytes()))
        elif op == OP_STOP:
            return forwards
        elif op in handlers:
            handlers[op](runner, header)
            forwards += op == OP_FORWARD_HIDDEN
        else:
            raise RuntimeError(f"follower rank {comm.rank}: unknown step op {op}")


def _answer(hooks: FollowerHooks | None, runner: ModelRunner | None, payload: bytes) -> bytes:
    """The follower's reply; a failure is a reply too (rank 0 decides), never a broken group."""
    try:
        if hooks is None or runner is None:
            raise RuntimeError("this rank was started without a handler for calls")
        return hooks.call(runner, payload)
    except Exception as error:  # noqa: BLE001 - reported to rank 0 as the reply
        log.exception("follower call failed")
        return json.dumps({"error": f"{type(error).__name__}: {error}"}).encode()


def _watchers(hooks: FollowerHooks | None, runner: ModelRunner, chunks: list[SeqChunk]):
    """The forward's layer callback: `hooks.layer_done` for each watched chunk (None: no watcher)."""
    watched = [c for c in chunks if c.watch_key >= 0]
    if hooks is None or not watched:
        return None

    def on_layer(layer: int) -> None:
        for chunk in watched:
            try:
                hooks.layer_done(runner, chunk, layer)
            except Exception:  # noqa: BLE001 - the transfer notices; the step must go on
                log.exception("layer hook failed")

    return on_layer
