"""`ParallelConfig`: how one worker's model is split over its ranks.

world = max(tp, ep); tp and ep are each 1 or the world size. tp splits attention q/kv heads,
DeltaNet k/v heads (with their conv channels and state), dense and shared MLPs (column- then
row-parallel) and the vocab; ep splits the routed experts. With tp = 1 and ep > 1 every rank
runs attention whole and only the experts are divided.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from engine.model_config import ModelConfig


@dataclass(frozen=True, slots=True)
class ParallelConfig:
    tp: int = 1
    ep: int = 1

    def __post_init__(self) -> None:
        for name in ("tp", "ep"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        world = max(self.tp, self.ep)
        if self.tp not in (1, world) or self.ep not in (1, world):
            raise ValueError(f"tp={self.tp}, ep={self.ep}: each must be 1 or the world size {world}")

    @property
    def world_size(self) -> int:
        return max(self.tp, self.ep)

    def check_model(self, cfg: ModelConfig) -> None:
        """A clear error when the model's heads or experts do not divide over the ranks."""
        tp = self.tp
        checks = [
            ("num_attention_heads", cfg.num_attention_heads, tp),
            ("linear_num_key_heads", cfg.linear_num_key_heads, tp),
            ("linear_num_value_heads", cfg.linear_num_value_heads, tp),
        ]
        kv = cfg.num_key_value_heads
        if kv >= tp:
            checks.append(("num_key_value_heads", kv, tp))
        elif tp % kv:
            raise ValueError(f"tp={tp} must be a multiple of num_key_value_heads={kv} to replicate kv heads")
        if cfg.num_experts > 0:
            checks.append(("num_experts", cfg.num_experts, self.ep))
        for name, count, ranks in checks:
            if count and count % ranks:
                raise ValueError(f"{name}={count} does not divide over {ranks} ranks")

    def local_config(self, cfg: ModelConfig) -> ModelConfig:
        """The config a rank's shard computes with: its own head counts (vocab stays whole)."""
        if self.tp == 1:
            return cfg
        self.check_model(cfg)
        tp = self.tp
        return dataclasses.replace(
            cfg,
            num_attention_heads=cfg.num_attention_heads // tp,
            num_key_value_heads=max(1, cfg.num_key_value_heads // tp),
            linear_num_key_heads=cfg.linear_num_key_heads // tp,
            linear_num_value_heads=cfg.linear_num_value_heads // tp,
        )
