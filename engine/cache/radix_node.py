"""The pieces of `RadixCache`: tree nodes and the values its methods return."""

from __future__ import annotations

from dataclasses import dataclass


class RadixNode:
    """One full block of one cached prefix. The root of a namespace has no block (depth 0)."""

    __slots__ = ("block_hash", "page_id", "parent", "children", "depth", "checkpoint", "pins", "last_access")

    def __init__(self, block_hash: int, page_id: int, parent: RadixNode | None, depth: int) -> None:
        self.block_hash = block_hash
        self.page_id = page_id  # -1 at a root
        self.parent = parent
        self.children: dict[int, RadixNode] = {}
        self.depth = depth  # blocks from the root: this block ends at token depth * block_size
        self.checkpoint: int | None = None  # checkpoint slot: state after tokens [0, end of block)
        self.pins = 0  # live matches that will copy this node's checkpoint
        self.last_access = 0

    @property
    def is_leaf(self) -> bool:
        return not self.children


class MatchHandle:
    """Keeps a matched checkpoint pinned until `RadixCache.release(handle)`. Release every handle
    exactly once, even one that pins nothing (no match, or a pure-attention model)."""

    __slots__ = ("_node", "released")

    def __init__(self, node: RadixNode | None) -> None:
        self._node = node
        self.released = False


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """`num_tokens` cached tokens (a multiple of block_size); `page_ids` hold their KV, one per
    block, and the caller now owns one reference to each; `checkpoint_slot` holds the DeltaNet
    state after those tokens (None for a pure-attention model or an empty match)."""

    num_tokens: int
    page_ids: tuple[int, ...]
    checkpoint_slot: int | None
    handle: MatchHandle

    @property
    def num_blocks(self) -> int:
        return len(self.page_ids)


@dataclass(frozen=True, slots=True)
class InsertResult:
    """`page_ids`: the tree's page for every full block inserted (where the block was already
    cached this is the tree's page, not the caller's duplicate). `new_block_hashes` were added;
    `checkpoint_hashes` gained a checkpoint; `discarded_checkpoints` slots were freed because their
    block already had one."""

    page_ids: tuple[int, ...]
    new_block_hashes: tuple[int, ...]
    checkpoint_hashes: tuple[int, ...]
    discarded_checkpoints: int
