"""`WeightPlacer`: each checkpoint tensor, as it streams in, goes to its place in the model's
weights on the target device and dtype, cut to this rank's shard (`engine/parallel/shard.py`);
per-expert tensors are copied into the preallocated stacked tensors and dropped. FP8 weights are
dequantized, or kept with one scale row per weight row, as `engine/loader.py` describes.
`engine/loader.py::load_checkpoint` drives it.
"""


from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from engine.model_config import ModelConfig
from engine.models.checkpoint_format import expected_shapes
from engine.models.linear import SCALE_SUFFIX
from engine.models.mtp import PREFIX as MTP_PREFIX
from engine.models.mtp import mtp_expected_shapes
from engine.models.weight_routes import Piece, route
from engine.ops.fp8 import FP8_DTYPE, dequantize_block_fp8, expand_scale_rows, scale_shape
from engine.parallel.config import ParallelConfig
from engine.parallel.shard import local_shapes, shard_expert_piece, shard_tensor
from engine.safetensors_stream import FileHeader, read_entry, read_one

log = logging.getLogger("engine.loader")  # the load's log lines keep their logger name

PROGRESS_MIN_BYTES = 1 << 30  # show a progress bar for loads of at least 1 GiB
LOG_EVERY_BYTES = 4 << 30
# The dense linears `fp8_compute=block` keeps in FP8 (prefix-stripped checkpoint names).
_FP8_LINEAR = re.compile(
    r"^layers\.\d+\.(self_attn\.[qkvo]_proj|linear_attn\.(in_proj_\w+|out_proj)"
    r"|mlp\.(shared_expert\.)?(gate|up|down)_proj)\.weight$"
)


class CheckpointError(ValueError):
    """A checkpoint that does not match its config: missing or misshapen tensors, missing files."""


class WeightPlacer:
    """Puts each arriving tensor in its place; knows the expected shapes and what is filled."""

    def __init__(
        self,
        model_dir: Path,
        cfg: ModelConfig,
        dtype: torch.dtype,
        device: torch.device,
        headers: list[FileHeader],
    ) -> None:
        self.model_dir, self.cfg, self.dtype, self.device = model_dir, cfg, dtype, device
        self.headers = headers
        self.where = {e.name: h for h in headers for e in h.entries}
        self.expected = dict(expected_shapes(cfg))
        has_mtp = cfg.mtp_num_hidden_layers > 0 and any(n.startswith(MTP_PREFIX) for n in self.where)
        if has_mtp:
            self.expected.update({MTP_PREFIX + k: v for k, v in mtp_expected_shapes(cfg).items()})
        self.sharding: tuple[ParallelConfig, int] | None = None
        self.placed: dict[str, torch.Tensor] = {}
        self.filled: dict[str, int] = {}
        self.expert_parts: dict[str, set[str]] = {}  # stacked target → per-expert names placed
        self.keep_fp8 = False  # fp8_compute block: dense linears stay FP8
        self.fp8_kept: list[str] = []
        self.fp8_dequantized: list[str] = []

    def shard_for(self, parallel: ParallelConfig, rank: int) -> None:
        """Place rank `rank`'s shard only (the MTP head's tensors split like the main layers')."""
        parallel.check_model(self.cfg)
        self.sharding = (parallel, rank)
        self.expected = local_shapes(self.cfg, self.expected, parallel, rank)

    # --- reading ------------------------------------------------------------------------------
    def run(self, hasher, progress: bool | None) -> None:
        wanted = [e for h in self.headers for e in h.entries if self._local_name(e.name) is not None]
        read_all = hasher is not None  # the identity needs every byte
        total = sum(h.data_bytes for h in self.headers) if read_all else sum(e.nbytes for e in wanted)
        show = progress if progress is not None else total >= PROGRESS_MIN_BYTES
        bar = tqdm(
            total=total, unit="B", unit_scale=True, desc="loading weights", disable=not show, file=sys.stderr
        )
        done_bytes, done_tensors, next_log, started = 0, 0, LOG_EVERY_BYTES, time.monotonic()
        for header in self.headers:
            if hasher is not None:
                hasher.update(header.raw)
            with open(header.path, "rb", buffering=0) as f:
                for entry in header.entries:
                    local = self._local_name(entry.name)
                    if local is None and not read_all:
                        continue
                    tensor = read_entry(f, entry, hasher)
                    if local is not None:
                        self._place(local, entry.name, tensor)
                    del tensor
                    done_bytes += entry.nbytes
                    done_tensors += 1
                    bar.update(entry.nbytes)
                    if done_bytes >= next_log:
                        next_log += LOG_EVERY_BYTES
                        log.info(
                            "loaded %d tensors, %.1f / %.1f GB", done_tensors, done_bytes / 1e9, total / 1e9
                        )
        bar.close()
        log.info(
            "loaded %s: %d tensors, %.2f GB in %.1f s",
            self.model_dir,
            done_tensors,
            done_bytes / 1e9,
            time.monotonic() - started,
        )

    def _local_name(self, name: str) -> str | None:
        """The prefix-stripped name of a tensor the model uses, or None (scales, vision, ...)."""
        if name.endswith(SCALE_SUFFIX):
            return None
        prefix = self.cfg.weight_prefix
        if name.startswith(prefix):
            return name[len(prefix) :]
        if name == "lm_head.weight" or name.startswith(MTP_PREFIX):
            return name
        return None

    # --- placing ------------------------------------------------------------------------------
    def _place(self, local: str, hf_name: str, tensor: torch.Tensor) -> None:
        row_scales = None
        if tensor.dtype == FP8_DTYPE:
            scale_inv = self._scale_inv(hf_name, tensor)
            if self.keep_fp8 and _FP8_LINEAR.match(local) and tensor.dim() == 2:
                row_scales = expand_scale_rows(scale_inv, tensor.shape[0], self._block[0])
            else:
                tensor = self._dequantize(hf_name, tensor, scale_inv, self._block)
                self.fp8_dequantized.append(local)
        try:
            pieces = route(self.cfg, local, tensor, self.cfg.moe_intermediate_size)
            scales = (
                [None] * len(pieces)
                if row_scales is None
                else route(self.cfg, local, row_scales, self.cfg.moe_intermediate_size)
            )
        except RuntimeError as error:  # a fused projection that does not reshape
            raise CheckpointError(
                f"{self.model_dir}: tensor {hf_name} {tuple(tensor.shape)}: {error}"
            ) from None
        for piece, scale in zip(pieces, scales, strict=True):
            if piece.target not in self.expected:
                continue
            if scale is not None:
                piece, scale = self._sharded_fp8(piece, scale.tensor, hf_name)
            else:
                piece = self._sharded(piece)
            if piece is None:
                continue
            if scale is None:
                self._put(piece, hf_name)
            else:
                self._put_fp8(piece, scale, hf_name)

    def _sharded(self, piece: Piece) -> Piece | None:
        if self.sharding is None:
            return piece
        parallel, rank = self.sharding
        if piece.index is None:
            return Piece(
                piece.target, None, shard_tensor(self.cfg, piece.target, piece.tensor, parallel, rank)
            )
        placed = shard_expert_piece(self.cfg, piece.target, piece.index, piece.tensor, parallel, rank)
        return None if placed is None else Piece(piece.target, placed[0], placed[1])

    def _sharded_fp8(
        self, piece: Piece, row_scales: torch.Tensor, hf_name: str
    ) -> tuple[Piece, torch.Tensor | None]:
        """Rank's rows / columns of an FP8 weight and of its row scales, cut alike. A shard that
        cuts the columns inside a scale block cannot keep its scales: that weight is dequantized
        (and then placed like any other, scale None)."""
        if self.sharding is None:
            return piece, row_scales
        parallel, rank = self.sharding
        weight = shard_tensor(self.cfg, piece.target, piece.tensor, parallel, rank)
        cols, block_k = piece.tensor.shape[1], self._block[1]
        if weight.shape[1] != cols and weight.shape[1] % block_k:
            log.debug(  # counted in log_fp8's line
                "%s: tp=%d cuts its %d columns inside %d-column scale blocks; dequantized at load",
                hf_name, parallel.tp, cols, block_k,
            )  # fmt: skip
            self.fp8_dequantized.append(piece.target)
            dense = self._dequantize(hf_name, piece.tensor, row_scales, (1, block_k))
            return Piece(
                piece.target, None, shard_tensor(self.cfg, piece.target, dense, parallel, rank)
            ), None
        scales = shard_tensor(self.cfg, piece.target, row_scales, parallel, rank)
        return Piece(piece.target, None, weight), scales

    @property
    def _block(self) -> tuple[int, int]:
        return self.cfg.quantization.weight_block_size

    def _scale_inv(self, hf_name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The fp8 tensor's `weight_scale_inv`, read and shape-checked, on the target device."""
        if self.cfg.quantization is None:
            raise CheckpointError(
                f"{self.model_dir}: tensor {hf_name} is float8_e4m3fn but config.json declares no "
                "quantization_config; refusing to cast fp8 weights without their scales"
            )
        scale_name = hf_name + SCALE_SUFFIX
        header = self.where.get(scale_name)
        if header is None:
            raise CheckpointError(f"{self.model_dir}: fp8 tensor {hf_name} has no {scale_name}")
        scale_inv = read_one(header, scale_name).to(self.device)
        expected = scale_shape(tuple(tensor.shape), self._block)
        if tuple(scale_inv.shape) != expected:
            raise CheckpointError(
                f"{self.model_dir}: {scale_name}: weight_scale_inv has shape {tuple(scale_inv.shape)}; a "
                f"{tuple(tensor.shape)} weight in {self._block[0]}x{self._block[1]} blocks needs {expected}"
            )
        return scale_inv

    def _dequantize(
        self, hf_name: str, tensor: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]
    ) -> torch.Tensor:
        # On the target device (a GPU dequantizes fast) and straight into the target dtype.
        try:
            return dequantize_block_fp8(tensor.to(self.device), scale_inv, block, self.dtype)
        except ValueError as error:
            raise CheckpointError(f"{self.model_dir}: {hf_name}{SCALE_SUFFIX}: {error}") from None

    def _put_fp8(self, piece: Piece, row_scales: torch.Tensor, hf_name: str) -> None:
        """An FP8 weight kept as is (`[N, K]`, not the transposed storage of plain linears), its
        row scales beside it under `<target>_scale_inv`."""
        shape = self.expected[piece.target]
        if tuple(piece.tensor.shape) != shape:
            raise CheckpointError(
                f"{self.model_dir}: tensor {hf_name} has shape {tuple(piece.tensor.shape)}, config implies {shape}"
            )
        self.placed[piece.target] = piece.tensor.to(self.device).contiguous()
        self.placed[piece.target + SCALE_SUFFIX] = row_scales.to(self.device, torch.float32).contiguous()
        self.filled[piece.target] = piece.tensor.numel()
        self.fp8_kept.append(piece.target)

    def log_fp8(self) -> None:
        """One line: which modules run the FP8 block GEMM and which FP8 weights were dequantized."""
        if self.cfg.quantization is None:
            return

        def kinds(names: list[str]) -> str:
            return ", ".join(
                sorted({re.sub(r"^layers\.\d+\.|\.weight$|\.\d+\.", ".", n).strip(".") for n in names})
            )

        if not self.keep_fp8:
            log.info(
                "fp8 checkpoint: fp8_compute=dequantize, every FP8 weight dequantized to %s at load",
                self.dtype,
            )
            return
        log.info(
            "fp8 checkpoint: fp8_compute=block, %d linears run the FP8 block GEMM (%s); dequantized at "
            "load: %d (%s)",
            len(self.fp8_kept), kinds(self.fp8_kept), len(self.fp8_dequantized), kinds(self.fp8_dequantized) or "none",
        )  # fmt: skip

    def _put(self, piece: Piece, hf_name: str) -> None:
        shape = self.expected[piece.target]
        if piece.index is None:
            if tuple(piece.tensor.shape) != shape:
                raise CheckpointError(
                    f"{self.model_dir}: tensor {hf_name} has shape {tuple(piece.tensor.shape)}, config implies {shape}"
                )
            if _transposed_storage(piece.target, shape):
                self._target(piece.target, shape).copy_(piece.tensor)
            else:  # no copy at all when dtype and device already match
                self.placed[piece.target] = piece.tensor.to(device=self.device, dtype=self.dtype).contiguous()
            self.filled[piece.target] = piece.tensor.numel()
            return
        dst = self._target(piece.target, shape)[piece.index]
        if dst.shape != piece.tensor.shape:
            raise CheckpointError(
                f"{self.model_dir}: tensor {hf_name} has shape {tuple(piece.tensor.shape)}, "
                f"config implies {tuple(dst.shape)}"
            )
        dst.copy_(piece.tensor)
        self.filled[piece.target] = self.filled.get(piece.target, 0) + piece.tensor.numel()
        self.expert_parts.setdefault(piece.target, set()).add(hf_name)

    def _target(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The preallocated canonical tensor `name` (allocated on first use)."""
        tensor = self.placed.get(name)
        if tensor is None:
            tensor = self.placed[name] = _allocate(name, shape, self.dtype, self.device)
        return tensor

    def finish(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        for name, shape in self.expected.items():
            if self.filled.get(name, 0) != _numel(shape):
                raise CheckpointError(f"{self.model_dir}: checkpoint lacks tensor {self._hf_name(name)}")
        # Hand the tensors over and keep no reference: `HybridModel` drops each layer's canonical
        # tensors once it has built that layer.
        placed, self.placed = self.placed, {}
        extra = {k: placed.pop(k) for k in [k for k in placed if k.startswith(MTP_PREFIX)]}
        return placed, extra

    def _hf_name(self, name: str) -> str:
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")) and (
            name in self.expert_parts or self.cfg.text_model_type == "qwen3_next"
        ):
            return self._missing_expert(name)
        if name == "lm_head.weight" or name.startswith(MTP_PREFIX):
            return name
        return self.cfg.weight_prefix + name

    def _missing_expert(self, name: str) -> str:
        base = self._hf_name(name.rsplit(".", 1)[0])
        kinds = ("down_proj",) if name.endswith("down_proj") else ("gate_proj", "up_proj")
        placed = self.expert_parts.get(name, set())
        for e in range(self.cfg.num_experts):
            for kind in kinds:
                if f"{base}.{e}.{kind}.weight" not in placed:
                    return f"{base}.{e}.{kind}.weight"
        return base


def _transposed_storage(name: str, shape: tuple[int, ...]) -> bool:
    """Linear weights live in the compute layout the model multiplies with ([in, out]; experts
    [E, in, out]); the canonical [out, in] tensor is a transposed view of it. The model's
    `.t().contiguous()` then returns that storage as is: no second copy of the weights at load."""
    if name.endswith(("embed_tokens.weight", "lm_head.weight")):
        return False
    linear = len(shape) == 2 and name.endswith(".weight")
    return linear or name.endswith(("experts.gate_up_proj", "experts.down_proj"))


def _allocate(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if not _transposed_storage(name, shape):
        return torch.empty(shape, dtype=dtype, device=device)
    storage_shape = (*shape[:-2], shape[-1], shape[-2])
    return torch.empty(storage_shape, dtype=dtype, device=device).transpose(-1, -2)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
