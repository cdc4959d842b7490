"""`EngineConfig`: how one engine sizes its pools and batches. Built once (CLI, worker config) and
passed down; the engine never reads global settings."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from engine.parallel.config import ParallelConfig
from engine.quant_config import check_fp8_compute

DEFAULT_CACHE_BYTES = 1 << 30


@dataclass(frozen=True, slots=True)
class EngineConfig:
    block_size: int = 16  # tokens per KV page = granularity of the prefix cache
    # Memory: explicit counts win; otherwise `cache_bytes` is split between pages and slots.
    cache_bytes: int = DEFAULT_CACHE_BYTES
    num_pages: int | None = None
    num_slots: int | None = None  # live state slots (defaults to max_num_seqs)
    checkpoint_slots: int | None = (
        None  # state slots owned by the prefix cache (defaults to 4 * max_num_seqs)
    )
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048  # per-step token budget (prefill chunks + decodes)
    prefill_chunk_size: int = 512
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    enable_prefix_cache: bool = True
    checkpoint_every_blocks: int = 64  # K: a state checkpoint every K blocks during long prefills
    dtype: str | None = None  # None: the checkpoint's dtype
    device: str = "cpu"
    seed: int = 0  # for requests without a seed of their own
    # Speculative decoding with the checkpoint's MTP head: drafts per step (0 = off, 1..4). A
    # checkpoint without MTP weights runs without speculation. See engine/speculative.
    num_speculative_tokens: int = 0
    # Per step, draft 0..k tokens, whichever gives the most tokens per second by the acceptance and
    # step costs measured so far (engine/speculative/policy.py); off: always k.
    adaptive_speculation: bool = False
    # GPU path. Decode steps replay CUDA graphs captured per batch-size bucket unless
    # `enforce_eager` (graphs need a cuda device; the CPU always runs eagerly).
    enforce_eager: bool = False
    cuda_graph_bytes: int = 256 << 20  # taken from cache_bytes for the graphs (measured: metrics)
    # Overlap scheduling (engine/overlap.py): plan step N+1 while step N runs. None = on for cuda.
    overlap_schedule: bool | None = None
    # Parallelism inside one worker (engine/parallel): tensor-parallel degree over heads, MLPs and
    # vocab; expert-parallel degree over routed experts. world = max(tp, ep) ranks.
    tp: int = 1
    ep: int = 1
    # cuda only: the cache budget is this fraction of the GPU's total memory minus what this
    # process already holds (weights), so two processes on one GPU size independently of start
    # order (engine/gpu_budget.py). None: `cache_bytes` is the budget.
    gpu_memory_utilization: float | None = None
    # FP8 checkpoints (engine/ops/fp8_compute.py): `block` keeps the dense linears in FP8 and runs
    # the block-scaled Triton GEMM; `dequantize` dequantizes at load; `auto` = block on CUDA GPUs
    # with FP8 tensor cores (compute capability >= 8.9), else dequantize.
    fp8_compute: str = "auto"

    def __post_init__(self) -> None:
        positive = ("block_size", "max_num_seqs", "max_num_batched_tokens", "prefill_chunk_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"EngineConfig.{name} must be a positive integer, got {value!r}")
        for name in ("num_pages", "num_slots", "checkpoint_slots", "max_model_len"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"EngineConfig.{name} must be a non-negative integer, got {value!r}")
        if self.num_slots is not None and self.num_slots < 1:
            raise ValueError("EngineConfig.num_slots must be >= 1")
        if self.checkpoint_every_blocks < 1:
            raise ValueError(f"checkpoint_every_blocks must be >= 1, got {self.checkpoint_every_blocks}")
        if not isinstance(self.num_speculative_tokens, int) or not 0 <= self.num_speculative_tokens <= 4:
            raise ValueError(
                f"num_speculative_tokens must be an integer in [0, 4], got {self.num_speculative_tokens!r}"
            )
        if not isinstance(self.cuda_graph_bytes, int) or self.cuda_graph_bytes < 0:
            raise ValueError(f"cuda_graph_bytes must be a non-negative integer, got {self.cuda_graph_bytes!r}")
        ParallelConfig(self.tp, self.ep)  # a clear error for a bad combination
        utilization = self.gpu_memory_utilization
        if utilization is not None and not (isinstance(utilization, int | float) and 0 < utilization <= 1):
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {utilization!r}")
        check_fp8_compute(self.fp8_compute)
        if self.cache_bytes <= 0:
            raise ValueError(f"cache_bytes must be > 0, got {self.cache_bytes}")

    @property
    def parallel(self) -> ParallelConfig:
        return ParallelConfig(self.tp, self.ep)

    @property
    def live_slots(self) -> int:
        return self.num_slots if self.num_slots is not None else self.max_num_seqs

    @property
    def cache_checkpoint_slots(self) -> int:
        if not self.enable_prefix_cache:
            return 0
        return self.checkpoint_slots if self.checkpoint_slots is not None else 4 * self.max_num_seqs

    @classmethod
    def from_options(cls, **options: Any) -> EngineConfig:
        """From keyword options, rejecting unknown names with a message."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown engine options {unknown}; known: {sorted(known)}")
        return cls(**options)
