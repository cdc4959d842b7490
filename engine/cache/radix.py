"""`RadixCache`: the hybrid prefix cache — shared KV pages plus DeltaNet state checkpoints.

A tree over FULL blocks (`block_size` tokens), one root per cache namespace `extra` (from
`hashing.cache_extra`: model id + tenant), keyed by the chained block hashes of `hashing.py`, so
the same tokens under another tenant never share anything. This module only moves ids; the engine
copies the tensors.

Ownership
- Pages (`PagePool`): the tree holds ONE reference to the page of every node. A sequence that
  shares a cached prefix holds its own references (`match` increfs for it; the sequence decrefs
  them when it finishes, like any page of its block table).
- Checkpoints (a separate `StatePool` of checkpoint slots, not the live slots): a node may own one
  slot holding the DeltaNet state after tokens [0, end of its block). Checkpoints exist only at
  block ends. The tree owns them; a match pins the one it returns until `release(handle)`.

Life of a request (driven by `engine.cache.prefix_cache.PrefixCache`, which the block manager
calls on admission and the engine after each step; nothing else calls this tree)
1. Admission, `PrefixCache.attach_prefix`: `m = cache.match(prompt, extra)` gives the longest
   cached prefix that ends at a checkpoint (any block end when `has_state=False`) and leaves at
   least one prompt token to compute. The sequence's block table starts with `m.page_ids`,
   `m.checkpoint_slot` is copied into its live slot, `cache.release(m.handle)` unpins it, and the
   sequence prefills from `m.num_tokens`. `match_blocks` also finds where the prompt branches off
   the cached blocks, so a checkpoint can be taken there.
2. After each step, `PrefixCache.after_step`: at a due block end p (every K blocks of a long
   prefill, the prompt's last block end, the branch point) `slot = cache.allocate_checkpoint()`
   (None = no room: skip it), the live state at p is copied into it, and
   `cache.insert(tokens[:p], block_table, extra, {p: slot})` adopts the pages of new full blocks
   (incref) and the slot. A decoding sequence instead keeps one rolling snapshot slot.
3. At the end, `PrefixCache.cache_finished`: `insert` of prompt + output with the rolling
   snapshot as its checkpoint. The sequence then decrefs its whole block table as usual.
4. Under memory pressure `cache.evict(n)` frees pages of least recently used leaves that no
   sequence references; `allocate_checkpoint` thins interior checkpoints before leaf ones.
5. Peers: `PrefixCache.export_prefix` / `begin_import` / `commit_import` pin a match for a reader
   or insert pages that arrived from another worker, through the same `match` / `insert`.
Every change to the set of cached blocks/checkpoints is reported as a `KvEvent` to `on_event`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping, Sequence

from engine.cache.events import KvEvent
from engine.cache.hashing import block_hashes
from engine.cache.page_pool import PagePool
from engine.cache.radix_checks import check_insert, check_new_pages
from engine.cache.radix_node import InsertResult, MatchHandle, PrefixMatch, RadixNode
from engine.cache.state_pool import OutOfSlots, StatePool

__all__ = ["InsertResult", "MatchHandle", "PrefixMatch", "RadixCache"]


class RadixCache:
    def __init__(
        self,
        page_pool: PagePool,
        checkpoint_pool: StatePool,
        block_size: int = 16,
        has_state: bool = True,
        on_event: Callable[[KvEvent], None] | None = None,
    ) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.page_pool = page_pool
        self.checkpoint_pool = checkpoint_pool
        self.block_size = block_size
        self.has_state = has_state
        self.on_event = on_event
        self._roots: dict[bytes, RadixNode] = {}
        self._node_of_page: dict[int, RadixNode] = {}
        self._leaves: set[RadixNode] = set()  # non-root nodes without children: eviction candidates
        self._checkpointed: set[RadixNode] = set()
        self._clock = 0
        self.evictions = 0  # blocks evicted
        self.checkpoint_evictions = 0  # checkpoints dropped (alone, or with their block)

    # ---- stats ---------------------------------------------------------------------------------
    @property
    def num_cached_blocks(self) -> int:
        return len(self._node_of_page)

    @property
    def num_checkpoints(self) -> int:
        return len(self._checkpointed)

    def cached_page_ids(self) -> set[int]:
        return set(self._node_of_page)

    def is_cached_page(self, page_id: int) -> bool:
        return page_id in self._node_of_page

    def checkpoint_slots(self) -> set[int]:
        return {node.checkpoint for node in self._checkpointed}  # type: ignore[misc]

    def block_hashes_of(self, token_ids: Sequence[int], extra: bytes = b"") -> list[int]:
        return block_hashes(token_ids, self.block_size, extra)

    # ---- lookup --------------------------------------------------------------------------------
    def match(
        self, token_ids: Sequence[int], extra: bytes = b"", *, hashes: Sequence[int] | None = None
    ) -> PrefixMatch:
        """Longest reusable cached prefix of `token_ids` (see the module docstring). The caller owns
        one reference to each returned page and must `release(handle)` once it has copied the
        checkpoint (always release, even an empty match). `hashes` (optional, every method): the
        sequence's `block_hashes(token_ids, block_size, extra)` if already computed."""
        usable_blocks = max(len(token_ids) - 1, 0) // self.block_size  # leave >= 1 token to compute
        path = self._walk(token_ids[: usable_blocks * self.block_size], extra, hashes)
        end = len(path)
        if self.has_state:
            while end > 0 and path[end - 1].checkpoint is None:
                end -= 1
        path = path[:end]
        if not path:
            return PrefixMatch(0, (), None, MatchHandle(None))
        self._touch(path)
        pages = tuple(node.page_id for node in path)
        self.page_pool.incref(pages)
        last = path[-1]
        if not self.has_state:
            return PrefixMatch(end * self.block_size, pages, None, MatchHandle(None))
        last.pins += 1
        return PrefixMatch(end * self.block_size, pages, last.checkpoint, MatchHandle(last))

    def release(self, handle: MatchHandle) -> None:
        """Unpin the checkpoint of a match. Releasing a handle twice raises ValueError."""
        if handle.released:
            raise ValueError("match handle released twice")
        handle.released = True
        if handle._node is not None:
            handle._node.pins -= 1

    def match_blocks(
        self, token_ids: Sequence[int], extra: bytes = b"", *, hashes: Sequence[int] | None = None
    ) -> list[int]:
        """Pages of the longest cached full-block prefix, ignoring checkpoints and without backing
        off from a full hit (a decode worker reports these so they are not sent again). The caller
        owns one reference to each returned page."""
        path = self._walk(token_ids, extra, hashes)
        self._touch(path)
        pages = [node.page_id for node in path]
        self.page_pool.incref(pages)
        return pages

    def cached_prefix_tokens(
        self, token_ids: Sequence[int], extra: bytes = b"", *, hashes: Sequence[int] | None = None
    ) -> int:
        """How many tokens `match` would reuse, without taking references or touching LRU."""
        usable_blocks = max(len(token_ids) - 1, 0) // self.block_size
        path = self._walk(token_ids[: usable_blocks * self.block_size], extra, hashes)
        end = len(path)
        while self.has_state and end > 0 and path[end - 1].checkpoint is None:
            end -= 1
        return end * self.block_size

    def _hashes(self, token_ids: Sequence[int], extra: bytes, hashes: Sequence[int] | None) -> Sequence[int]:
        num_blocks = len(token_ids) // self.block_size
        if hashes is None:
            return block_hashes(token_ids[: num_blocks * self.block_size], self.block_size, extra)
        if len(hashes) < num_blocks:
            raise ValueError(f"{len(hashes)} precomputed hashes for {num_blocks} full blocks")
        return hashes[:num_blocks]

    def _walk(self, token_ids: Sequence[int], extra: bytes, hashes: Sequence[int] | None) -> list[RadixNode]:
        node = self._roots.get(bytes(extra))
        if node is None:
            return []
        path = []
        for block_hash in self._hashes(token_ids, extra, hashes):
            node = node.children.get(block_hash)
            if node is None:
                break
            path.append(node)
        return path

    # ---- insertion -----------------------------------------------------------------------------
    def insert(
        self,
        token_ids: Sequence[int],
        page_ids: Sequence[int],
        extra: bytes = b"",
        checkpoints: Mapping[int, int] | None = None,
        *,
        hashes: Sequence[int] | None = None,
    ) -> InsertResult:
        """Cache the full blocks of `token_ids`, whose KV lives in `page_ids` (the sequence's block
        table; entries past the last full block are ignored). New blocks adopt the sequence's page
        (the tree increfs it); blocks already cached keep the tree's page. `checkpoints` maps a block
        end (a positive multiple of block_size, <= len(token_ids)) to a slot from
        `allocate_checkpoint()` that already holds the state there; the tree takes every such slot
        (one landing on a block that already has a checkpoint is freed). On ValueError nothing
        changed and the caller still owns its pages and slots."""
        checkpoints = dict(checkpoints or {})
        num_blocks = len(token_ids) // self.block_size
        hashes = self._hashes(token_ids, extra, hashes)
        check_insert(self, page_ids, num_blocks, checkpoints)
        root = self._roots.get(bytes(extra))
        existing = self._existing_path(root, hashes)
        check_new_pages(self, page_ids[len(existing) : num_blocks])
        if root is None:
            root = self._roots[bytes(extra)] = RadixNode(0, -1, None, 0)
        path = list(existing)
        node = path[-1] if path else root
        new_hashes = []
        for index in range(len(existing), num_blocks):
            node = self._add_child(node, hashes[index], page_ids[index])
            path.append(node)
            new_hashes.append(node.block_hash)
        checkpoint_hashes, discarded = self._adopt_checkpoints(path, checkpoints)
        self._touch(path)
        if new_hashes or checkpoint_hashes:
            self._emit(KvEvent("stored", tuple(new_hashes), tuple(checkpoint_hashes)))
        pages = tuple(node.page_id for node in path)
        return InsertResult(pages, tuple(new_hashes), tuple(checkpoint_hashes), discarded)

    def _existing_path(self, root: RadixNode | None, hashes: Sequence[int]) -> list[RadixNode]:
        path: list[RadixNode] = []
        node = root
        for block_hash in hashes:
            node = node.children.get(block_hash) if node is not None else None
            if node is None:
                break
            path.append(node)
        return path

    def _add_child(self, parent: RadixNode, block_hash: int, page_id: int) -> RadixNode:
        child = RadixNode(block_hash, page_id, parent, parent.depth + 1)
        self.page_pool.incref([page_id])
        parent.children[block_hash] = child
        self._leaves.discard(parent)
        self._leaves.add(child)
        self._node_of_page[page_id] = child
        return child

    def _adopt_checkpoints(self, path: list[RadixNode], checkpoints: dict[int, int]) -> tuple[list[int], int]:
        gained, discarded = [], 0
        for position in sorted(checkpoints):
            node, slot = path[position // self.block_size - 1], checkpoints[position]
            if node.checkpoint is None:
                node.checkpoint = slot
                self._checkpointed.add(node)
                gained.append(node.block_hash)
            else:
                self.checkpoint_pool.free(slot)
                discarded += 1
        return gained, discarded

    # ---- memory pressure -----------------------------------------------------------------------
    def allocate_checkpoint(self) -> int | None:
        """A free checkpoint slot for the caller to fill and pass to `insert` (the caller owns it
        until then; give it back with `free_checkpoint` if the insert does not happen). When the
        pool is empty, drops the least recently used unpinned checkpoint, interior ones before those
        at leaves. None when every checkpoint is pinned."""
        if self.checkpoint_pool.num_free == 0:
            victims = [node for node in self._checkpointed if node.pins == 0]
            if not victims:
                return None
            victim = min(victims, key=lambda node: (node.is_leaf, node.last_access))
            self._drop_checkpoint(victim)
            self._emit(KvEvent("removed", (), (victim.block_hash,)))
        try:
            return self.checkpoint_pool.allocate()
        except OutOfSlots:  # pragma: no cover - a slot was just freed
            return None

    def free_checkpoint(self, slot: int) -> None:
        """Give back a slot from `allocate_checkpoint` that was never inserted."""
        self.checkpoint_pool.free(slot)

    def evict(self, num_pages: int) -> int:
        """Free up to `num_pages` pages by evicting least recently used leaves that only the tree
        references and no match pins (a parent whose last child goes becomes a leaf in turn).
        Leaves that no match could end at (no checkpoint, on a model with state) go first. Their
        checkpoints go with them. Returns the number of pages freed."""
        heap = [(self._eviction_key(node), id(node), node) for node in self._leaves if self._evictable(node)]
        heapq.heapify(heap)
        removed_blocks, removed_checkpoints = [], []
        while heap and len(removed_blocks) < num_pages:
            _, _, node = heapq.heappop(heap)
            parent = node.parent
            if node.checkpoint is not None:
                removed_checkpoints.append(node.block_hash)
            self._remove_leaf(node)
            removed_blocks.append(node.block_hash)
            if (
                parent is not None
                and parent.parent is not None
                and parent.is_leaf
                and self._evictable(parent)
            ):
                heapq.heappush(heap, (self._eviction_key(parent), id(parent), parent))
        if removed_blocks:
            self._emit(KvEvent("removed", tuple(removed_blocks), tuple(removed_checkpoints)))
        return len(removed_blocks)

    def _evictable(self, node: RadixNode) -> bool:
        return node.pins == 0 and self.page_pool.refcount(node.page_id) == 1

    def _eviction_key(self, node: RadixNode) -> tuple[bool, int]:
        useful = node.checkpoint is not None or not self.has_state
        return (useful, node.last_access)

    def _remove_leaf(self, node: RadixNode) -> None:
        if node.checkpoint is not None:
            self._drop_checkpoint(node)
        parent = node.parent
        assert parent is not None and not node.children
        del parent.children[node.block_hash]
        self._leaves.discard(node)
        del self._node_of_page[node.page_id]
        self.page_pool.decref([node.page_id])
        self.evictions += 1
        if parent.parent is not None and parent.is_leaf:
            self._leaves.add(parent)
        if parent.parent is None and parent.is_leaf:
            self._roots = {key: root for key, root in self._roots.items() if root is not parent}

    def _drop_checkpoint(self, node: RadixNode) -> None:
        slot = node.checkpoint
        assert slot is not None and node.pins == 0
        node.checkpoint = None
        self._checkpointed.discard(node)
        self.checkpoint_pool.free(slot)
        self.checkpoint_evictions += 1

    # ---- helpers -------------------------------------------------------------------------------
    def _touch(self, path: list[RadixNode]) -> None:
        self._clock += 1
        for node in path:
            node.last_access = self._clock

    def _emit(self, event: KvEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def iter_nodes(self) -> Iterator[RadixNode]:
        """Every non-root node (for tests and debugging)."""
        return iter(self._node_of_page.values())
