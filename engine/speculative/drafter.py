"""`Drafter`: runs the MTP head to propose k tokens per speculating sequence.

Per sequence it keeps the target's final-normed hidden states of the positions the MTP has not
consumed yet ([mtp_pos, num_computed)) and the sequence's MTP attention KV. A draft round first
catches the MTP up over those positions (entry p reads h[p] and token p+1; its KV is kept), whose
last row proposes draft 1; drafts 2..k feed the previous MTP output back as the hidden state.
Draft-time entries past the last verified position are overwritten by the next catch-up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.models.mtp import MtpHead, MtpKv
from engine.models.mtp_attention import CachedGroup
from engine.sampling_params import SamplingParams
from engine.speculative.acceptance import draw, greedy_tokens, processed_probs


@dataclass
class SeqSpecState:
    seq: object  # the engine's Sequence this state belongs to
    kv: MtpKv
    mtp_pos: int  # MTP entries exist for positions [kv.valid_from, mtp_pos)
    # Target hidden states of positions [mtp_pos, hidden_end) not yet fed to the MTP, as row blocks
    # in order (views of the steps' hidden tensors: appending one costs no tensor op, and a run of
    # steps without drafting does not re-copy what it has gathered so far).
    hidden: list[torch.Tensor]
    pending: int = 0  # rows in `hidden`

    @property
    def hidden_end(self) -> int:
        return self.mtp_pos + self.pending

    def append(self, rows: torch.Tensor) -> None:
        self.hidden.append(rows)
        self.pending += rows.shape[0]


@dataclass
class DraftRequest:
    state: SeqSpecState
    token_ids: list[int]  # all known tokens of the sequence (prompt + output)
    num_drafts: int
    params: SamplingParams
    generator: torch.Generator | None


@dataclass
class Draft:
    tokens: list[int]
    probs: torch.Tensor | None  # [k, V] the distributions the drafts were drawn from (sampling only)


class Drafter:
    def __init__(self, head: MtpHead) -> None:
        self.head = head

    def new_state(self, seq: object, start: int, hidden: torch.Tensor) -> SeqSpecState:
        kv = MtpKv(self.head.cfg, start, hidden.dtype, hidden.device)
        return SeqSpecState(seq, kv, start, [hidden], hidden.shape[0])

    def forget(self, state: SeqSpecState) -> None:
        """The sequence's MTP state is dropped (the head of a group frees the followers' KV)."""
        self.head.release(state.kv)

    @torch.inference_mode()
    def draft(self, requests: list[DraftRequest]) -> list[Draft]:
        if not requests:
            return []
        out, positions = self._catch_up(requests)
        drafts = [Draft([], [] if not r.params.greedy else None) for r in requests]
        active = list(range(len(requests)))
        step = 0
        while active:
            logits = self.head.logits(out)
            best = greedy_tokens(logits).tolist()  # one read-back for every greedy row
            for row, index in enumerate(active):
                self._choose(requests[index], drafts[index], logits, row, best[row])
            step += 1
            keep = [row for row, index in enumerate(active) if requests[index].num_drafts > step]
            if not keep:
                break
            if len(keep) < len(active):  # (greedy batches usually keep every row: no gather)
                index = torch.tensor(keep, device=out.device)
                out, positions = out.index_select(0, index), positions.index_select(0, index)
            active = [active[row] for row in keep]
            positions = positions + 1
            tokens = torch.tensor([drafts[i].tokens[-1] for i in active], device=out.device)
            groups = [
                CachedGroup(requests[i].state.kv, row, row + 1, requests[i].state.mtp_pos + step - 1)
                for row, i in enumerate(active)
            ]
            out = self.head.forward(out, tokens, positions, groups)
        for d in drafts:
            if d.probs is not None:
                d.probs = torch.stack(d.probs)
        return drafts

    def _catch_up(self, requests: list[DraftRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        """MTP over each sequence's pending positions (the head writes every row's K/V and returns
        each sequence's last row, the one that drafts); returns those rows and their positions."""
        hidden, tokens, positions, groups, last = [], [], [], [], []
        row = 0
        for r in requests:
            state = r.state
            start, end = state.mtp_pos, state.hidden_end
            state.kv.ensure(end + r.num_drafts)
            hidden.extend(state.hidden)
            tokens.extend(r.token_ids[start + 1 : end + 1])
            positions.extend(range(start, end))
            groups.append(CachedGroup(state.kv, row, row + end - start, start))
            row += end - start
            last.append(row - 1)
            state.mtp_pos, state.hidden, state.pending = end, [], 0
        device = hidden[0].device
        pos = torch.tensor(positions, device=device)
        rows = torch.cat(hidden) if len(hidden) > 1 else hidden[0]
        out = self.head.forward(rows, torch.tensor(tokens, device=device), pos, groups)  # last rows
        if row == len(requests):  # one row each: every row is a last row
            return out, pos
        return out, pos.index_select(0, torch.tensor(last, device=device))

    @staticmethod
    def _choose(request: DraftRequest, draft: Draft, logits: torch.Tensor, row: int, best: int) -> None:
        """`logits`: every active row's; a greedy row reads only `best` (no per-row view)."""
        if request.params.greedy:
            draft.tokens.append(best)
            return
        probs = processed_probs(logits[row : row + 1], request.params)[0]
        draft.tokens.append(draw(probs, request.generator))
        draft.probs.append(probs)
