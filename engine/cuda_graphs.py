"""`DecodeGraphs`: pure-decode steps as CUDA-graph replays, one graph per batch-size bucket.

A decode step of n sequences runs the graph of the smallest bucket >= n (1, 2, 4, 8, 16, 24, ...,
up to `max_batch`). Its inputs are static device buffers (token ids, positions, the page and
offset each new KV row goes to, state slots, block tables, context lengths), all views of ONE
device buffer: the host plans the step into a pinned copy of that buffer and sends it with one
non_blocking copy, then replays. Rows n..bucket are padding: they write their KV to a scratch page
and their state to a scratch slot that no sequence owns, attend to one token, and their logits are
dropped. Block tables are as wide as `max_model_len` needs, so kernels size their work by a bound
planned once (graph-safe: no host read, no data-dependent shape).

Steps with prefill chunks, speculative verify chunks, a layer callback, or more sequences than the
largest bucket run eagerly. `capture=False` runs the same static-buffer forward without graphs:
what the CPU tests check padding and planning with. The memory captured graphs take is measured
around capture (`torch.cuda.mem_get_info`) as `graph_bytes`.
"""

from __future__ import annotations

import torch

from engine.cache.tensors import CacheTensors
from engine.models.forward_batch import ForwardBatch
from engine.models.hybrid import HybridModel

_VECTORS = ("token_ids", "positions", "write_pages", "write_offsets", "slots")  # int64, [max_batch]


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
        capture: bool = True,
    ) -> None:
        self.model = model
        self.cache = cache
        self.buckets = batch_buckets(max_batch)
        self.max_batch = max_batch
        # A row's table never needs more pages than the pool has.
        self.max_blocks = min(-(-max_model_len // cache.block_size), cache.num_pages)
        self.scratch_page, self.scratch_slot = scratch_page, scratch_slot
        self.device = model.device
        self.capture = capture and self.device.type == "cuda"
        self._layout_buffers()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.graph_bytes = 0
        self.replays = 0
        self.capture_error: str | None = None  # why graphs are off although asked for
        if self.capture:
            try:
                self._capture_all()
            except RuntimeError as error:  # an op of the step is not graph-safe: run eagerly
                self.graphs.clear()
                self.outputs.clear()
                self.capture_error = f"{type(error).__name__}: {error}"

    # ---- static buffers ----------------------------------------------------------------------
    def _layout_buffers(self) -> None:
        rows = self.max_batch
        self._vector_bytes = len(_VECTORS) * rows * 8 + rows * 4  # + context_lens int32
        self._vector_bytes = -(-self._vector_bytes // 8) * 8
        self._row_bytes = self.max_blocks * 4
        total = self._vector_bytes + rows * self._row_bytes
        pinned = self.device.type == "cuda"
        self._staging = torch.zeros(total, dtype=torch.uint8, pin_memory=pinned)
        self._buffer = torch.zeros(total, dtype=torch.uint8, device=self.device)
        self.host = _views(self._staging, rows, self.max_blocks, self._vector_bytes)
        self.static = _views(self._buffer, rows, self.max_blocks, self._vector_bytes)
        self._event: torch.cuda.Event | None = None

    def can_run(self, chunks: list) -> bool:
        return 0 < len(chunks) <= self.max_batch and all(
            len(c.token_ids) == 1
            and c.start_pos > 0
            and getattr(c, "step_slots", None) is None
            and c.start_pos < self.max_blocks * self.cache.block_size
            for c in chunks
        )

    def bucket_for(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def _plan(self, chunks: list, bucket: int) -> None:
        """Write the step into the host staging buffer (rows past len(chunks) are padding)."""
        if self._event is not None:
            self._event.synchronize()  # the previous step's copy has read the staging buffer
        host, block_size, n = self.host, self.cache.block_size, len(chunks)
        positions = [c.start_pos for c in chunks]
        host["token_ids"][:n] = torch.tensor([c.token_ids[0] for c in chunks])
        host["positions"][:n] = torch.tensor(positions)
        host["write_pages"][:n] = torch.tensor(
            [c.block_table[p // block_size] for c, p in zip(chunks, positions, strict=True)]
        )
        host["write_offsets"][:n] = torch.tensor([p % block_size for p in positions])
        host["slots"][:n] = torch.tensor([c.state_slot for c in chunks])
        host["context_lens"][:n] = torch.tensor([p + 1 for p in positions], dtype=torch.int32)
        tables = host["block_tables"]
        for row, (c, p) in enumerate(zip(chunks, positions, strict=True)):
            used = p // block_size + 1
            tables[row, :used] = torch.tensor(c.block_table[:used], dtype=torch.int32)
        self._pad(n, bucket)

    def _pad(self, start: int, end: int) -> None:
        host = self.host
        for name, value in (
            ("token_ids", 0),
            ("positions", 0),
            ("write_pages", self.scratch_page),
            ("write_offsets", 0),
            ("slots", self.scratch_slot),
            ("context_lens", 1),
        ):
            host[name][start:end] = value
        host["block_tables"][start:end, 0] = self.scratch_page

    def _upload(self, bucket: int) -> None:
        """ONE non_blocking copy: all vectors, and the block-table rows of the bucket."""
        nbytes = self._vector_bytes + bucket * self._row_bytes
        if self.device.type == "cpu":
            self._buffer[:nbytes].copy_(self._staging[:nbytes])
            return
        self._buffer[:nbytes].copy_(self._staging[:nbytes], non_blocking=True)
        self._event = torch.cuda.Event()
        self._event.record()

    def _batch(self, bucket: int) -> ForwardBatch:
        s = self.static
        return ForwardBatch(
            token_ids=s["token_ids"][:bucket],
            positions=s["positions"][:bucket],
            write_pages=s["write_pages"][:bucket],
            write_offsets=s["write_offsets"][:bucket],
            num_decode=bucket,
            decode_slots=s["slots"][:bucket],
            decode_block_tables=s["block_tables"][:bucket],
            decode_context_lens=s["context_lens"][:bucket],
            prefills=(),
            chunk_rows=[(i, i + 1) for i in range(bucket)],
        )

    def _forward(self, bucket: int) -> torch.Tensor:
        hidden = self.model.hidden_states(self._batch(bucket), self.cache)
        return self.model.logits(hidden)

    # ---- capture and replay ------------------------------------------------------------------
    def _capture_all(self) -> None:
        torch.cuda.synchronize()
        free_before = torch.cuda.mem_get_info()[0]
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        for bucket in reversed(self.buckets):  # largest first: smaller ones reuse its pool memory
            self._pad(0, bucket)
            self._upload(bucket)
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.inference_mode():
                self._forward(bucket)  # warm-up: Triton compiles, lazy allocations
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph, pool=pool):
                self.outputs[bucket] = self._forward(bucket)
            self.graphs[bucket] = graph
        torch.cuda.synchronize()
        self.graph_bytes = max(free_before - torch.cuda.mem_get_info()[0], 0)

    @torch.inference_mode()
    def run(self, chunks: list) -> torch.Tensor:
        """fp32 logits [len(chunks), vocab] of one decode step; writes KV and advances states."""
        bucket = self.bucket_for(len(chunks))
        self._plan(chunks, bucket)
        self._upload(bucket)
        self.replays += 1
        if bucket in self.graphs:
            self.graphs[bucket].replay()
            return self.outputs[bucket][: len(chunks)]
        return self._forward(bucket)[: len(chunks)]


def _views(buffer: torch.Tensor, rows: int, max_blocks: int, vector_bytes: int) -> dict[str, torch.Tensor]:
    views = {}
    for i, name in enumerate(_VECTORS):
        views[name] = buffer[i * rows * 8 : (i + 1) * rows * 8].view(torch.int64)
    start = len(_VECTORS) * rows * 8
    views["context_lens"] = buffer[start : start + rows * 4].view(torch.int32)
    views["block_tables"] = buffer[vector_bytes:].view(torch.int32).view(rows, max_blocks)
    return views
