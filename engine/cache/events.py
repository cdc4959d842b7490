"""`KvEvent`: what the radix cache tells the global prefix index (through a callback).

`stored`: blocks newly in the tree (`block_hashes`, chained hashes from `engine.cache.hashing`)
and the blocks whose end gained a state checkpoint (`checkpoint_hashes`; a checkpoint block may
also be an old block). `removed`: blocks that left the tree (their checkpoints went with them), or
with only `checkpoint_hashes`, checkpoints dropped from blocks that stay cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

KvEventKind = Literal["stored", "removed"]


@dataclass(frozen=True, slots=True)
class KvEvent:
    kind: KvEventKind
    block_hashes: tuple[int, ...] = ()
    checkpoint_hashes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("stored", "removed"):
            raise ValueError(f"KvEvent.kind must be 'stored' or 'removed', got {self.kind!r}")
