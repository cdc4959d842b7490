"""Speculative decoding (the MTP head) across a worker's ranks.

Rank 0 drafts, verifies and accepts; every model call on that path has collectives (row-parallel
all-reduces, the vocab-parallel embedding and lm head), so rank 0 broadcasts each call first and
the followers run the same call on their shard. The header is step_sync's 8 int64s:

- `OP_FORWARD_HIDDEN` [op, n_chunks, n_ints]: the verify step's `forward_hidden` over the chunks
  (`LeaderRunner`); the follower keeps the hidden rows.
- `OP_HIDDEN_LOGITS` [op, n_rows] + the row indices: the lm head over those rows of that forward.
- `OP_MTP_FORWARD` [op, n_rows, n_groups, n_released] + ints (next tokens, positions, per group
  (kv uid, valid_from, row start, row end), released kv uids) + the input hidden rows in the
  model's dtype. The hidden rows travel because rank 0 assembles them from several earlier steps;
  they are [rows, hidden], small next to a step's all-reduces.
- `OP_MTP_LOGITS` [op, n_rows] + the rows: the head's (vocab-parallel) logits.

Each rank keeps its own shard (local kv heads) of every sequence's MTP KV, named by `MtpKv.uid`;
rank 0's `release` of a KV reaches the followers with its next MTP forward.
"""

from __future__ import annotations

import torch

from engine.model_runner import ModelRunner
from engine.models.mtp import MtpHead, MtpKv
from engine.models.mtp_attention import CachedGroup
from engine.parallel.comm import Comm
from engine.parallel.step_sync import (
    OP_FORWARD_HIDDEN,
    OP_HIDDEN_LOGITS,
    OP_MTP_FORWARD,
    OP_MTP_LOGITS,
    OpHandler,
    _send_header,
    receive_chunks,
)


class LeaderMtpHead(MtpHead):
    """Rank 0's MTP head: broadcasts each call before running its own shard of it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._released: list[int] = []

    def release(self, kv: MtpKv) -> None:
        self._released.append(kv.uid)

    def forward(self, hidden, next_tokens, positions, groups: list[CachedGroup]):
        if any(not isinstance(g, CachedGroup) or g.kv is None for g in groups):
            raise ValueError("a group's MTP forward needs each sequence's MtpKv")
        hidden = hidden.to(self.model.dtype)
        released, self._released = self._released, []
        tail = [value for g in groups for value in (g.kv.uid, g.kv.valid_from, g.row_start, g.row_end)]
        device = self.comm.device
        ints = torch.cat(  # tokens and positions stay on the device: no read-back here
            [
                next_tokens.to(device, torch.int64),
                positions.to(device, torch.int64),
                torch.tensor(tail + released, dtype=torch.int64, device=device),
            ]
        )
        _send_header(self.comm, OP_MTP_FORWARD, hidden.shape[0], len(groups), len(released))
        self.comm.broadcast(ints)
        self.comm.broadcast(hidden.to(self.comm.device).contiguous())
        return super().forward(hidden, next_tokens, positions, groups)

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        out = out.to(self.model.dtype)  # what the followers receive (a no-op for the head's output)
        _send_header(self.comm, OP_MTP_LOGITS, out.shape[0])
        self.comm.broadcast(out.to(self.comm.device).contiguous())
        return super().logits(out)


class SpecFollower:
    """A follower rank's side of the speculative ops: the last verify forward's hidden rows, the
    MTP head (built on first use) and its shard of each sequence's MTP KV."""

    def __init__(self, comm: Comm, model) -> None:
        self.comm, self.model = comm, model
        self.hidden: torch.Tensor | None = None
        self._head: MtpHead | None = None
        self.kv: dict[int, MtpKv] = {}

    def handlers(self) -> dict[int, OpHandler]:
        return {
            OP_FORWARD_HIDDEN: self.forward_hidden,
            OP_HIDDEN_LOGITS: self.hidden_logits,
            OP_MTP_FORWARD: self.mtp_forward,
            OP_MTP_LOGITS: self.mtp_logits,
        }

    @property
    def head(self) -> MtpHead:
        if self._head is None:
            self._head = MtpHead.from_model(self.model)
            if self._head is None:
                raise RuntimeError(f"rank {self.comm.rank}: rank 0 drafts with an MTP head this shard lacks")
        return self._head

    def forward_hidden(self, runner: ModelRunner, header: list[int]) -> None:
        self.hidden, _ = runner.forward_hidden(receive_chunks(self.comm, header))

    def hidden_logits(self, runner: ModelRunner, header: list[int]) -> None:
        rows = self._ints(header[1]).tolist() if header[1] else []
        runner.hidden_logits(self.hidden, rows)

    def mtp_forward(self, runner: ModelRunner, header: list[int]) -> None:
        rows, n_groups, n_released = header[1:4]
        ints = self._ints(2 * rows + 4 * n_groups + n_released).cpu()
        hidden = self._rows(rows)
        device = self.model.device
        positions = ints[rows : 2 * rows]
        groups = []
        for uid, valid_from, start, end in ints[2 * rows : 2 * rows + 4 * n_groups].view(-1, 4).tolist():
            kv = self.kv.get(uid)
            if kv is None:
                kv = self.kv[uid] = MtpKv(self.head.cfg, valid_from, self.model.dtype, device)
            kv.ensure(int(positions[end - 1]) + 1)
            groups.append(CachedGroup(kv, start, end, int(positions[start])))
        tokens, positions = ints[:rows].to(device), positions.to(device)
        for uid in ints[2 * rows + 4 * n_groups :].tolist():
            self.kv.pop(uid, None)
        with torch.inference_mode():
            self.head.forward(hidden, tokens, positions, groups)

    def mtp_logits(self, runner: ModelRunner, header: list[int]) -> None:
        with torch.inference_mode():
            self.head.logits(self._rows(header[1]))

    def _ints(self, count: int) -> torch.Tensor:
        return self.comm.broadcast(torch.zeros(count, dtype=torch.int64, device=self.comm.device))

    def _rows(self, count: int) -> torch.Tensor:
        """[count, hidden] rows in the model's dtype, as rank 0 sent them."""
        buffer = torch.empty(
            count, self.model.config.hidden_size, dtype=self.model.dtype, device=self.comm.device
        )
        return self.comm.broadcast(buffer).to(self.model.device)
