"""`ModelRunner`: one forward of the hybrid model over a mixed batch of prefill chunks and decode steps.

A chunk carries new tokens of one sequence, where they start, the pages covering its context and
its live DeltaNet state slot. The forward writes the new tokens' KV into their pages and advances
each state slot in place, so chunked prefill (any `start_pos`), prefix-cache continuation and
decode are the same call. Decode tokens of the batch share single matmuls, one batched recurrent
step over their slots and one paged-attention call per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.cache.tensors import CacheTensors
from engine.cuda_graphs import DecodeGraphs
from engine.models.forward_batch import build_forward_batch, validate_chunks
from engine.models.hybrid import HybridModel
from engine.models.step_metadata import MetadataUploader
from engine.ops.norms import rms_norm_zero_centered


@dataclass
class SeqChunk:
    token_ids: list[int]  # new tokens computed this step (>= 1)
    start_pos: int  # tokens of this sequence already in KV pages and in its state slot
    block_table: list[int]  # pages covering [0, start_pos + len(token_ids))
    state_slot: int  # live DeltaNet state slot (holds the state at start_pos)
    # Speculative verify: one slot per token, [state_slot, spare...]; the DeltaNet state after
    # token t is written to step_slots[t] (None: the state advances in state_slot only).
    step_slots: list[int] | None = None
    # Set on rank 0 for a sequence someone watches layer by layer (its KV ships as it is written):
    # follower ranks hand it to their layer hook (engine/parallel/step_sync.py). -1: unwatched.
    watch_key: int = -1


class ModelRunner:
    def __init__(self, model: HybridModel, cache: CacheTensors) -> None:
        cfg = model.config
        expected_kv = (cfg.num_attention_layers, cfg.num_key_value_heads, cfg.head_dim)
        actual_kv = (cache.kv.shape[0], cache.kv.shape[4], cache.kv.shape[5])
        if expected_kv != actual_kv or cache.conv.shape[0] != cfg.num_linear_layers:
            raise ValueError(
                f"cache tensors do not fit the model: kv {tuple(cache.kv.shape)}, model {expected_kv}"
            )
        self.model = model
        self.cache = cache
        self.uploader = MetadataUploader(model.device)  # the step's index tensors: one copy
        self.graphs: DecodeGraphs | None = None  # set by the engine on cuda unless enforce_eager

    @torch.inference_mode()
    def forward(
        self,
        chunks: list[SeqChunk],
        *,
        all_logits: bool = False,
        layer_callback: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """fp32 logits: [len(chunks), vocab] for each chunk's last token, or [sum(len), vocab] in
        chunk order when `all_logits`. Tokens must lie in [0, vocab)."""
        vocab = self.model.config.vocab_size
        for chunk in chunks:
            if any(not 0 <= t < vocab for t in chunk.token_ids):
                raise ValueError(f"token ids must lie in [0, {vocab})")
        if not all_logits and self._graph_steps(chunks, layer_callback) == 1:
            return self.graphs.run(chunks)  # a decode step: one graph replay
        batch = self._batch(chunks)
        hidden = self.model.hidden_states(batch, self.cache, layer_callback)
        if all_logits:
            rows = [r for start, end in batch.chunk_rows for r in range(start, end)]
            if rows != list(range(batch.num_tokens)):
                hidden = hidden[torch.tensor(rows, device=hidden.device)]
        elif len(chunks) != batch.num_tokens or any(s != i for i, (s, _) in enumerate(batch.chunk_rows)):
            hidden = hidden[batch.last_rows]  # planned on the host, already on the device
        return self.model.logits(hidden)

    def _graph_steps(self, chunks: list[SeqChunk], layer_callback: Callable | None) -> int | None:
        """T when a captured graph runs this step (decode: 1, verify: k + 1), else None."""
        if self.graphs is None or layer_callback is not None:
            return None
        steps = self.graphs.steps_of(chunks)
        if steps is not None:  # the graph path skips build_forward_batch: check the chunks here
            validate_chunks(chunks, self.cache.block_size, self.cache.num_pages, self.cache.num_slots)
        return steps

    def _batch(self, chunks: list[SeqChunk]):
        return build_forward_batch(
            chunks,
            self.cache.block_size,
            self.cache.num_pages,
            self.cache.num_slots,
            self.model.device,
            self.uploader,
        )

    @torch.inference_mode()
    def forward_hidden(
        self, chunks: list[SeqChunk], layer_callback: Callable[[int], None] | None = None
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Speculative decoding: the final-normed hidden state of every row (logits come from
        `hidden_logits`; the MTP head reads them) and each chunk's rows [start, end)."""
        vocab = self.model.config.vocab_size
        for chunk in chunks:
            if any(not 0 <= t < vocab for t in chunk.token_ids):
                raise ValueError(f"token ids must lie in [0, {vocab})")
        steps = self._graph_steps(chunks, layer_callback)
        if steps is not None and steps > 1:  # a speculative verify step: one graph replay
            return self.graphs.run(chunks), [(i * steps, (i + 1) * steps) for i in range(len(chunks))]
        batch = self._batch(chunks)
        hidden = self.model.hidden_states(batch, self.cache, layer_callback)
        normed = rms_norm_zero_centered(hidden, self.model.norm, self.model.config.rms_norm_eps)
        return normed, batch.chunk_rows

    @torch.inference_mode()
    def hidden_logits(self, hidden: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """fp32 logits [len(rows), vocab] of rows `rows` of the last `forward_hidden`'s `hidden`
        (the rows are named by index so that follower ranks, which hold the same hidden states,
        can join the vocab-parallel lm head)."""
        return self.model.project(hidden[torch.tensor(rows, device=hidden.device)])
