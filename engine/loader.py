"""Load a Hugging Face checkpoint of the hybrid families into a `HybridModel`, streaming.

Tensors are read one at a time with plain reads (`engine/safetensors_stream.py`), in file order,
and go straight to their place on the target device in the target dtype: a whole tensor becomes
its weight (no copy when dtype and device already match); per-expert tensors are copied into the
preallocated stacked expert tensors and dropped. So host memory holds the final model (on CPU) and
one tensor in flight — never the checkpoint twice.

Block-quantized FP8 weights (`quantization_config.quant_method: fp8`) arrive with their
`weight_scale_inv` read beside them. Under `fp8_compute` `dequantize` (`engine/ops/fp8_compute.py`)
each is dequantized as it arrives (`engine/ops/fp8.py`). Under `block` the dense linears (attention
q/k/v/o, the DeltaNet projections, dense MLPs, shared experts) stay FP8: the canonical weight
`[N, K]` in float8_e4m3fn plus `<name>_scale_inv`, one scale row per weight row `[N, ceil(K / bk)]`,
so row splits (Qwen3-Next's fused in_proj), tensor-parallel shards and the model's concatenations
keep weight and scales aligned; the model runs them as `Fp8BlockLinear`. Still dequantized at load
under `block`: the routed experts (the MoE kernels take no FP8 weights), the MTP head, and a weight
whose tensor-parallel shard would cut its columns inside a scale block. An fp8 tensor in a
checkpoint whose config does not declare fp8 is refused: casting it would run silently wrong.

The bytes pass through the identity hasher on the way (`engine/identity.py`) unless the identity
is already cached for these exact files. Every expected tensor must be present with its exact shape.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import identity as ident
from engine.model_config import ModelConfig, parse_dtype
from engine.models.hybrid import HybridModel
from engine.ops.fp8_compute import resolve_fp8_compute
from engine.parallel.comm import SINGLE, Comm
from engine.parallel.config import ParallelConfig
from engine.safetensors_stream import SafetensorsError, read_header
from engine.weight_placer import CheckpointError, WeightPlacer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadedCheckpoint:
    config: ModelConfig
    model: HybridModel
    identity: str  # engine/identity.py


def load_model(
    model_dir: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu"
) -> tuple[ModelConfig, HybridModel]:
    """(config, model) with weights in `dtype` (default: the config's dtype) on `device`."""
    loaded = load_checkpoint(model_dir, dtype, device)
    return loaded.config, loaded.model


def load_checkpoint(
    model_dir: str | Path,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    parallel: ParallelConfig = ParallelConfig(),
    comm: Comm = SINGLE,
    fp8_compute: str = "auto",
) -> LoadedCheckpoint:
    """Config, model and identity. `progress`: None = a bar for loads of 1 GiB or more.
    `fp8_compute` (auto | dequantize | block, `engine/ops/fp8_compute.py`): how an FP8 checkpoint
    computes; a forced `block` that cannot run on `device` is refused.
    Under `parallel`, the model is rank `comm.rank`'s shard (`engine/parallel/shard.py`) and
    computes with the rank's local head counts; `config` stays the whole model's. (The shard is
    cut tensor by tensor as it arrives: a rank never holds more than its shard plus one tensor.)"""
    model_dir = Path(model_dir)
    config_bytes = _read_config_bytes(model_dir)
    cfg = ModelConfig.from_json(model_dir)
    try:
        files = ident.checkpoint_files(model_dir)
        headers = [read_header(model_dir / name) for name in files]
    except (ident.CheckpointFilesError, SafetensorsError) as error:
        raise CheckpointError(str(error)) from None
    identity = ident.cached_identity(model_dir, files)
    hasher = ident.new_hasher(config_bytes) if identity is None else None
    placer = WeightPlacer(model_dir, cfg, parse_dtype(dtype, cfg.dtype), torch.device(device), headers)
    if cfg.quantization is not None:
        placer.keep_fp8 = resolve_fp8_compute(fp8_compute, device) == "block"
    if comm.active:  # each tensor is cut to this rank's shard as it arrives
        placer.shard_for(parallel, comm.rank)
    placer.run(hasher, progress)
    if hasher is not None:
        identity = ident.finish(hasher)
        ident.store_identity(model_dir, files, identity)
    weights, extra = placer.finish()
    placer.log_fp8()
    del placer
    model = HybridModel(parallel.local_config(cfg), weights, extra, comm, parallel)
    return LoadedCheckpoint(cfg, model, identity)


def _read_config_bytes(model_dir: Path) -> bytes:
    path = model_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json at {path}")
    return path.read_bytes()
