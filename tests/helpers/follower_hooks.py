"""`FollowerHooks` that record what a follower rank saw (tests of engine/parallel/step_sync.py):
each `layer_done` of a watched chunk, with whether that layer's KV for the chunk's last token was
already in the rank's cache. `call(b"report")` answers the record as JSON. Lives here, not in a test
module, because spawned follower processes import it by name."""

from __future__ import annotations

import json
from pathlib import Path

from engine.engine_config import EngineConfig
from engine.model_config import ModelConfig


class RecordingHooks:
    def __init__(self, model_dir: Path, config: EngineConfig, rank: int) -> None:
        self.attention = {layer: i for i, layer in enumerate(ModelConfig.from_json(model_dir).attention_layer_ids)}
        self.block_size = config.block_size
        self.seen: list[list[int]] = []  # [watch_key, layer, start_pos, end_pos, kv written (0/1)]

    def call(self, runner, payload: bytes) -> bytes:
        if payload != b"report":
            raise ValueError(f"unknown call {payload!r}")
        return json.dumps(self.seen).encode()

    def layer_done(self, runner, chunk, layer: int) -> None:
        end = chunk.start_pos + len(chunk.token_ids)
        written = 1
        if layer in self.attention:
            page = chunk.block_table[(end - 1) // self.block_size]
            written = int(bool(runner.cache.kv[self.attention[layer], page, :, (end - 1) % self.block_size].any()))
        self.seen.append([chunk.watch_key, layer, chunk.start_pos, end, written])
