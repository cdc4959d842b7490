"""How an `LLMEngine` is put together, in this order (the order is part of the contract: the cache
budget is measured after the weights are loaded, and CUDA graphs are captured after the cache is
allocated):

1. load the checkpoint (this rank's shard) and resolve `--gpu-memory-utilization` into cache bytes;
2. decide CUDA graphs (cuda, not `enforce_eager`, one rank) and size the pools from the budget;
3. load the MTP head when speculation is asked for, and spare k state slots per live slot for it;
4. allocate the cache, then (rank 0 of a group) tell the followers its size and mirror it;
5. make the model runner and its `DecodeGraphs`;
6. make the page pool, the prefix cache and the block manager over them.

The request lifecycle and the step loop (`engine/llm_engine.py`) only use the parts built here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.block_manager import BlockManager
from engine.cache.page_pool import PagePool
from engine.cache.prefix_cache import PrefixCache
from engine.cache.state_pool import StatePool
from engine.cache.tensors import CacheTensors
from engine.cuda_graphs import DecodeGraphs
from engine.engine_config import EngineConfig
from engine.gpu_budget import resolve_cache_budget
from engine.loader import load_checkpoint
from engine.model_config import ModelConfig, parse_dtype
from engine.model_runner import ModelRunner
from engine.model_source import resolve_model
from engine.models.hybrid import HybridModel
from engine.models.mtp import MtpHead
from engine.parallel.comm import SINGLE, Comm
from engine.parallel.step_sync import LeaderRunner, mirrored, send_init
from engine.speculative import setup as spec_setup
from engine.tokenizer import Tokenizer


@dataclass(frozen=True, slots=True)
class EngineParts:
    """Everything `build_engine` made for one engine (rank 0 of its group)."""

    config: EngineConfig  # the caller's, with the cache budget resolved
    comm: Comm
    model_dir: Path
    model: HybridModel
    model_config: ModelConfig
    model_id: str
    tokenizer: Tokenizer | None
    eos_token_ids: frozenset[int]
    max_model_len: int
    cache: CacheTensors
    runner: ModelRunner
    memory: BlockManager
    prefix_cache: PrefixCache | None
    spec_head: MtpHead | None  # set when speculative decoding runs (a head and spare slots)
    overlap: bool  # overlap scheduling (engine/overlap.py)


@dataclass(frozen=True, slots=True)
class CacheLayout:
    """How the cache's pages and state slots are split. Slots, in index order: live, prefix-cache
    checkpoints, speculative spares, then the graph scratch slot (last)."""

    num_pages: int  # pages the pool hands out (the graph scratch page comes after them)
    live: int
    checkpoints: int
    spares: int  # 0 without speculation
    scratch: int  # 1 with CUDA graphs: a page and a slot the padding rows of a graph write to

    @property
    def checkpoint_slots(self) -> list[int]:
        return list(range(self.live, self.live + self.checkpoints))

    @property
    def num_slots(self) -> int:
        return self.live + self.checkpoints + self.spares + self.scratch


def build_engine(
    model_dir: str | Path,
    config: EngineConfig,
    *,
    on_kv_event: Callable[[object], None] | None,
    model_id: str | None,
    comm: Comm | None,
) -> EngineParts:
    """Load the model and build its cache, runner and memory managers (see the module docstring)."""
    comm = _leader_comm(config, comm)
    model_dir = resolve_model(model_dir)
    dtype = parse_dtype(config.dtype) if config.dtype else None
    loaded = load_checkpoint(
        model_dir, dtype=dtype, device=config.device, parallel=config.parallel, comm=comm,
        fp8_compute=config.fp8_compute,
    )  # fmt: skip
    model, model_config = loaded.model, loaded.config
    config = resolve_cache_budget(config, model_config)  # --gpu-memory-utilization
    # Namespaces the prefix-cache hashes: the weights' digest, never a path (engine/identity.py).
    model_id = model_id or loaded.identity
    tokenizer = Tokenizer.from_dir(model_dir) if (model_dir / "tokenizer.json").is_file() else None
    eos_token_ids = frozenset(generation_eos(model_dir, model_config))
    max_model_len = config.max_model_len or model_config.max_position_embeddings
    use_graphs = _use_cuda_graphs(config)
    cache_dtype = parse_dtype(config.dtype, model_config.dtype)
    spec_head, layout = _cache_layout(model, config, cache_dtype, use_graphs)
    cache, runner = _cache_and_runner(model, config, comm, layout, cache_dtype)
    if use_graphs:
        runner.graphs = DecodeGraphs(
            model,
            cache,
            max_batch=config.max_num_seqs,
            max_model_len=max_model_len,
            scratch_page=layout.num_pages,
            scratch_slot=cache.num_slots - 1,
            verify_steps=config.num_speculative_tokens + 1 if layout.spares else 0,
        )
    memory = _block_manager(cache, config, layout, model_config, model_id, on_kv_event)
    return EngineParts(
        config=config,
        comm=comm,
        model_dir=model_dir,
        model=model,
        model_config=model_config,
        model_id=model_id,
        tokenizer=tokenizer,
        eos_token_ids=eos_token_ids,
        max_model_len=max_model_len,
        cache=cache,
        runner=runner,
        memory=memory,
        prefix_cache=memory.prefix_cache,
        spec_head=spec_head if layout.spares else None,
        overlap=_overlap(config) and not layout.spares,  # the speculative step reads its tokens itself
    )


def _leader_comm(config: EngineConfig, comm: Comm | None) -> Comm:
    """`comm` when it is rank 0 of a group of `config.parallel.world_size` ranks (SINGLE for one)."""
    parallel = config.parallel
    group = comm.world_size if comm is not None else 1
    if (parallel.world_size > 1 and comm is None) or group != parallel.world_size or (comm and comm.rank):
        raise ValueError(
            f"tp={config.tp}, ep={config.ep} needs rank 0 of a {parallel.world_size}-rank group "
            "(engine/parallel/ranks.py starts one)"
        )
    return comm or SINGLE


def _use_cuda_graphs(config: EngineConfig) -> bool:
    """Graph capture runs the model on rank 0 alone: with follower ranks it would wait on
    collectives they never join, so several ranks run eagerly (one rank may capture)."""
    return (
        torch.device(config.device).type == "cuda"
        and not config.enforce_eager
        and config.parallel.world_size == 1
    )


def _cache_layout(
    model: HybridModel, config: EngineConfig, dtype: torch.dtype, use_graphs: bool
) -> tuple[MtpHead | None, CacheLayout]:
    """The MTP head (None without speculation) and the pool sizes, spares for the head included."""
    graph_reserve = config.cuda_graph_bytes if use_graphs else 0
    # Per rank: the local head counts size the pages and slots (model.config is the shard's).
    num_pages, live, checkpoints = pool_sizes(model.config, config, dtype, graph_reserve)
    spec_head = spec_setup.load_head(model, config)
    spares = spec_setup.spare_slots(spec_head, config, live)  # 0 without speculation
    return spec_head, CacheLayout(num_pages, live, checkpoints, spares, scratch=1 if use_graphs else 0)


def _cache_and_runner(
    model: HybridModel, config: EngineConfig, comm: Comm, layout: CacheLayout, dtype: torch.dtype
) -> tuple[CacheTensors, ModelRunner]:
    """The cache tensors and the runner over them; rank 0 of a group (of one rank: the TP path on
    one device) tells the followers the cache's size and runs every step on them too."""
    cache = CacheTensors.allocate(
        model.config,
        layout.num_pages + layout.scratch,
        layout.num_slots,
        config.block_size,
        dtype,
        config.device,
    )
    if not comm.active:
        return cache, ModelRunner(model, cache)
    send_init(comm, cache.num_pages, cache.num_slots)
    cache = mirrored(cache, comm)
    return cache, LeaderRunner(model, cache, comm)


def _block_manager(
    cache: CacheTensors,
    config: EngineConfig,
    layout: CacheLayout,
    model_config: ModelConfig,
    model_id: str,
    on_kv_event: Callable[[object], None] | None,
) -> BlockManager:
    """The page pool, the live slot pool and (when on) the prefix cache, under one block manager."""
    pages = PagePool(layout.num_pages)
    prefix_cache = None
    if config.enable_prefix_cache:
        prefix_cache = PrefixCache(
            cache,
            pages,
            layout.checkpoint_slots,
            config,
            has_state=model_config.num_linear_layers > 0,
            model_id=model_id,
            on_kv_event=on_kv_event,
        )
    live_pool = (
        spec_setup.live_pool(layout.live, layout.live + layout.checkpoints, layout.spares)
        if layout.spares
        else StatePool(range(layout.live))
    )
    return BlockManager(cache, pages, live_pool, prefix_cache)


def _overlap(config: EngineConfig) -> bool:
    """Overlap scheduling: on by default where a device runs asynchronously."""
    if config.overlap_schedule is None:
        return torch.device(config.device).type == "cuda"
    return config.overlap_schedule


def generation_eos(model_dir: Path, model_config: ModelConfig) -> tuple[int, ...]:
    """The eos ids `transformers` generate would stop at: generation_config.json, else config.json."""
    path = model_dir / "generation_config.json"
    if path.is_file():
        value = json.loads(path.read_text()).get("eos_token_id")
        if value is not None:
            return tuple(value) if isinstance(value, list) else (value,)
    return tuple(model_config.eos_token_id)


def pool_sizes(
    model_config: ModelConfig, config: EngineConfig, dtype: torch.dtype, graph_reserve: int = 0
) -> tuple[int, int, int]:
    """(pages, live slots, checkpoint slots) from explicit counts or the byte budget (less what
    CUDA graphs are budgeted to take)."""
    live, checkpoints = config.live_slots, config.cache_checkpoint_slots
    if config.num_pages is not None:
        return config.num_pages, live, checkpoints
    page_bytes, slot_bytes = CacheTensors.bytes_for(model_config, config.block_size, dtype)
    left = config.cache_bytes - graph_reserve - (live + checkpoints) * slot_bytes
    if page_bytes == 0:
        return config.cache_bytes // (config.block_size * 64), live, checkpoints
    if left < page_bytes * 16:
        raise ValueError(
            f"cache_bytes={config.cache_bytes} cannot hold {live + checkpoints} state slots of {slot_bytes} bytes "
            f"plus 16 pages of {page_bytes} bytes; raise cache_bytes or lower max_num_seqs/checkpoint_slots"
        )
    return left // page_bytes, live, checkpoints
