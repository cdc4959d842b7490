"""`DecodeGraphs`: decode and speculative-verify steps as CUDA-graph replays, one graph per
(batch-size bucket, tokens per sequence).

A step of n sequences with T tokens each (T = 1: decode; T = k + 1: verify of k drafts) runs the
graph of the smallest bucket >= n (1, 2, 4, 8, 16, 24, ..., up to `max_batch`). Its inputs are
static device buffers (token ids, positions, the page and offset each new KV row goes to, state
slots, block tables, context lengths, the verify step slots), all views of ONE device buffer: the
host plans the step into a pinned twin of that buffer and sends it with one non_blocking copy,
then replays. Padding sequences write their KV to a scratch page and their states to a scratch
slot that no sequence owns, attend to their own few tokens, and their outputs are dropped. Block
tables are as wide as `max_model_len` needs (capped by the pool), so kernels size their work by a
bound planned once: no host read, no data-dependent shape.

Decode graphs return logits [n, vocab]; verify graphs the final-normed hidden rows [n * T, hidden]
(what `ModelRunner.forward_hidden` returns; the MTP drafter reads them). Steps mixing kinds or
lengths, steps with a prefill chunk or a layer callback, and steps larger than the largest bucket
run eagerly. `capture=False` runs the same static-buffer forward without graphs: what the CPU tests
check padding and planning with. `graph_bytes` is the memory capture took (`mem_get_info`).
"""

from __future__ import annotations

import torch

from engine.cache.tensors import CacheTensors
from engine.models.forward_batch import ForwardBatch, VerifyGroup
from engine.models.hybrid import HybridModel
from engine.ops.norms import rms_norm_zero_centered

_ROW_VECTORS = ("token_ids", "positions", "write_pages", "write_offsets", "step_slots")  # int64, per row


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to max_batch (which is always the last bucket)."""
    sizes = [b for b in (1, 2, 4) if b < max_batch]
    sizes += list(range(8, max_batch, 8))
    return sorted(set(sizes) | {max_batch})


class DecodeGraphs:
    def __init__(
        self,
        model: HybridModel,
        cache: CacheTensors,
        *,
        max_batch: int,
        max_model_len: int,
        scratch_page: int,
        scratch_slot: int,
        verify_steps: int = 0,  # k + 1 with k speculative tokens; 0: no verify graphs
        capture: bool = True,
    ) -> None:
        self.model = model
        self.cache = cache
        self.buckets = batch_buckets(max_batch)
        self.max_batch = max_batch
        self.steps = (1, verify_steps) if verify_steps > 1 else (1,)
        if max(self.steps) > cache.block_size:
            raise ValueError(f"verify steps {verify_steps} exceed block_size {cache.block_size}")
        # A row's table never needs more pages than the pool has.
        self.max_blocks = min(-(-max_model_len // cache.block_size), cache.num_pages)
        self.scratch_page, self.scratch_slot = scratch_page, scratch_slot
        self.device = model.device
        self._layout_buffers(max_batch * max(self.steps))
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[int, int], torch.Tensor] = {}
        self.graph_bytes = 0
        self.replays = 0
        self.capture_error: str | None = None  # why graphs are off although asked for
        if capture and self.device.type == "cuda":
            try:
                self._capture_all()
            except RuntimeError as error:  # an op of the step is not graph-safe: run eagerly
                self.graphs.clear()
                self.outputs.clear()
                self.capture_error = f"{type(error).__name__}: {error}"

    # ---- static buffers ----------------------------------------------------------------------
    def _layout_buffers(self, rows: int) -> None:
        self.max_rows = rows
        self._vector_bytes = -(-(len(_ROW_VECTORS) * rows * 8 + rows * 4) // 8) * 8  # + context_lens
        self._row_bytes = self.max_blocks * 4
        total = self._vector_bytes + rows * self._row_bytes
        pinned = self.device.type == "cuda"
        self._staging = torch.zeros(total, dtype=torch.uint8, pin_memory=pinned)
        self._buffer = torch.zeros(total, dtype=torch.uint8, device=self.device)
        self.host = _views(self._staging, rows, self.max_blocks, self._vector_bytes)
        self.static = _views(self._buffer, rows, self.max_blocks, self._vector_bytes)
        self._event: torch.cuda.Event | None = None

    def steps_of(self, chunks: list) -> int | None:
        """T when the step is n sequences of T tokens each that a graph can run, else None."""
        if not 0 < len(chunks) <= self.max_batch:
            return None
        steps = len(chunks[0].token_ids)
        if steps not in self.steps:
            return None
        limit = self.max_blocks * self.cache.block_size
        for c in chunks:
            step_slots = getattr(c, "step_slots", None)
            if len(c.token_ids) != steps or c.start_pos <= 0 or c.start_pos + steps > limit:
                return None
            if (step_slots is None) != (steps == 1):
                return None
        return steps

    def can_run(self, chunks: list) -> bool:
        return self.steps_of(chunks) == 1

    def bucket_for(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def _plan(self, chunks: list, steps: int, bucket: int) -> None:
        """Write the step into the host staging buffer (sequences past len(chunks) are padding)."""
        if self._event is not None:
            self._event.synchronize()  # the previous step's copy has read the staging buffer
        host, block_size = self.host, self.cache.block_size
        rows = len(chunks) * steps
        positions = [c.start_pos + t for c in chunks for t in range(steps)]
        host["token_ids"][:rows] = torch.tensor([t for c in chunks for t in c.token_ids])
        host["positions"][:rows] = torch.tensor(positions)
        host["write_pages"][:rows] = torch.tensor(
            [c.block_table[(c.start_pos + t) // block_size] for c in chunks for t in range(steps)]
        )
        host["write_offsets"][:rows] = torch.tensor([p % block_size for p in positions])
        slots = [s for c in chunks for s in (c.step_slots if steps > 1 else [c.state_slot])]
        host["step_slots"][:rows] = torch.tensor(slots)
        host["context_lens"][:rows] = torch.tensor([p + 1 for p in positions], dtype=torch.int32)
        tables = host["block_tables"]
        for row, p in enumerate(positions):
            used = p // block_size + 1
            tables[row, :used] = torch.tensor(chunks[row // steps].block_table[:used], dtype=torch.int32)
        self._pad(rows, bucket * steps, steps)

    def _pad(self, start: int, end: int, steps: int) -> None:
        host = self.host
        offsets = torch.arange(start, end) % steps  # padding sequences hold positions 0..T-1
        host["token_ids"][start:end] = 0
        host["positions"][start:end] = offsets
        host["write_pages"][start:end] = self.scratch_page
        host["write_offsets"][start:end] = offsets
        host["step_slots"][start:end] = self.scratch_slot
        host["context_lens"][start:end] = (offsets + 1).to(torch.int32)
        host["block_tables"][start:end, 0] = self.scratch_page

    def _upload(self, rows: int) -> None:
        """ONE non_blocking copy: all row vectors, and the block-table rows in use."""
        nbytes = self._vector_bytes + rows * self._row_bytes
        if self.device.type == "cpu":
            self._buffer[:nbytes].copy_(self._staging[:nbytes])
            return
        self._buffer[:nbytes].copy_(self._staging[:nbytes], non_blocking=True)
        self._event = torch.cuda.Event()
        self._event.record()

    def _batch(self, bucket: int, steps: int) -> ForwardBatch:
        s, rows = self.static, bucket * steps
        verify = steps > 1
        return ForwardBatch(
            token_ids=s["token_ids"][:rows],
            positions=s["positions"][:rows],
            write_pages=s["write_pages"][:rows],
            write_offsets=s["write_offsets"][:rows],
            num_decode=0 if verify else bucket,
            decode_slots=s["step_slots"][: 0 if verify else bucket],
            decode_block_tables=s["block_tables"][:rows],
            decode_context_lens=s["context_lens"][:rows],
            prefills=(),
            chunk_rows=[(i * steps, (i + 1) * steps) for i in range(bucket)],
            num_verify_rows=rows if verify else 0,
            verify_groups=(VerifyGroup(0, steps, s["step_slots"][:rows].view(bucket, steps)),)
            if verify
            else (),
        )

    def _forward(self, bucket: int, steps: int) -> torch.Tensor:
        hidden = self.model.hidden_states(self._batch(bucket, steps), self.cache)
        if steps == 1:
            return self.model.logits(hidden)
        return rms_norm_zero_centered(hidden, self.model.norm, self.model.config.rms_norm_eps)

    # ---- capture and replay ------------------------------------------------------------------
    def _capture_all(self) -> None:
        torch.cuda.synchronize()
        free_before = torch.cuda.mem_get_info()[0]
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        for steps in self.steps:
            for bucket in reversed(self.buckets):  # largest first: smaller ones reuse its memory
                self._pad(0, bucket * steps, steps)
                self._upload(bucket * steps)
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream), torch.inference_mode():
                    self._forward(bucket, steps)  # warm-up: Triton compiles, lazy allocations
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.inference_mode(), torch.cuda.graph(graph, pool=pool):
                    self.outputs[(bucket, steps)] = self._forward(bucket, steps)
                self.graphs[(bucket, steps)] = graph
        torch.cuda.synchronize()
        self.graph_bytes = max(free_before - torch.cuda.mem_get_info()[0], 0)

    @torch.inference_mode()
    def run(self, chunks: list) -> torch.Tensor:
        """Decode (T = 1): fp32 logits [n, vocab]. Verify: normed hidden rows [n * T, hidden], chunk
        by chunk. Writes the KV of the new tokens and advances (verify: fans out) the states."""
        steps = self.steps_of(chunks)
        if steps is None:
            raise ValueError("these chunks are not a step a graph runs (see DecodeGraphs.steps_of)")
        bucket = self.bucket_for(len(chunks))
        self._plan(chunks, steps, bucket)
        self._upload(bucket * steps)
        self.replays += 1
        rows = len(chunks) * steps
        key = (bucket, steps)
        if key in self.graphs:
            self.graphs[key].replay()
            return self.outputs[key][:rows]
        return self._forward(bucket, steps)[:rows]


def _views(buffer: torch.Tensor, rows: int, max_blocks: int, vector_bytes: int) -> dict[str, torch.Tensor]:
    views = {}
    for i, name in enumerate(_ROW_VECTORS):
        views[name] = buffer[i * rows * 8 : (i + 1) * rows * 8].view(torch.int64)
    start = len(_ROW_VECTORS) * rows * 8
    views["context_lens"] = buffer[start : start + rows * 4].view(torch.int32)
    views["block_tables"] = buffer[vector_bytes:].view(torch.int32).view(rows, max_blocks)
    return views
