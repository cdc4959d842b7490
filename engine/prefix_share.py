"""Sharing cached prefixes between engines (the global index's "fetch, not recompute").

Holder side: `export_prefix` pins the longest checkpoint-ended cached prefix of a prompt (its pages
and its DeltaNet checkpoint) so a peer can read them; `release_export` unpins. Reader side:
`begin_import` takes pages + a checkpoint slot for the blocks about to arrive, `commit_import`
hands them to the radix tree (so the next request on this engine matches them like any cached
prefix) and `abort_import` gives them back. All of these run on the engine's thread."""

from __future__ import annotations

from dataclasses import dataclass

from engine.cache.hashing import cache_extra
from engine.cache.radix import MatchHandle


@dataclass
class ExportedPrefix:
    page_ids: tuple[int, ...]
    checkpoint_slot: int | None
    num_tokens: int
    handle: MatchHandle


@dataclass
class ImportBuffer:
    page_ids: list[int]
    checkpoint_slot: int | None
    num_blocks: int


class PrefixUnavailable(RuntimeError):
    pass


def _glue(engine):
    if engine.prefix_cache is None:
        raise PrefixUnavailable("this engine runs without a prefix cache")
    return engine.prefix_cache


def export_prefix(engine, token_ids: list[int], cache_salt: str, max_blocks: int) -> ExportedPrefix:
    glue = _glue(engine)
    block_size = glue.block_size
    limit = min(len(token_ids) - 1, max_blocks * block_size) + 1  # match leaves one token uncomputed
    match = glue.radix.match(token_ids[:limit], cache_extra(glue.model_id, cache_salt))
    if match.num_tokens == 0 or (glue.has_state and match.checkpoint_slot is None):
        _drop_match(glue, match)
        raise PrefixUnavailable("no checkpoint-ended cached prefix of that prompt here")
    return ExportedPrefix(tuple(match.page_ids), match.checkpoint_slot, match.num_tokens, match.handle)


def release_export(engine, exported: ExportedPrefix) -> None:
    glue = _glue(engine)
    _drop_match(glue, exported)


def _drop_match(glue, match) -> None:
    glue.radix.release(match.handle)
    if match.page_ids:
        glue.radix.page_pool.decref(list(match.page_ids))


def begin_import(engine, num_blocks: int) -> ImportBuffer:
    glue = _glue(engine)
    if num_blocks <= 0:
        raise ValueError("nothing to import")
    page_ids = engine.memory.allocate_pages(num_blocks)
    slot = None
    if glue.has_state:
        slot = glue.radix.allocate_checkpoint()
        if slot is None:
            glue.radix.page_pool.decref(page_ids)
            raise PrefixUnavailable("no checkpoint slot free for an imported prefix")
    return ImportBuffer(list(page_ids), slot, num_blocks)


def commit_import(engine, buffer: ImportBuffer, token_ids: list[int], cache_salt: str) -> int:
    """The buffer now holds the KV of `token_ids[:num_blocks * block_size]` and the state at its end."""
    glue = _glue(engine)
    num_tokens = buffer.num_blocks * glue.block_size
    checkpoints = {num_tokens: buffer.checkpoint_slot} if buffer.checkpoint_slot is not None else {}
    try:
        glue.radix.insert(token_ids[:num_tokens], buffer.page_ids, cache_extra(glue.model_id, cache_salt), checkpoints)
    except ValueError:
        abort_import(engine, buffer)
        raise
    glue.radix.page_pool.decref(buffer.page_ids)  # the tree holds its own references now
    return num_tokens


def abort_import(engine, buffer: ImportBuffer) -> None:
    glue = _glue(engine)
    if buffer.checkpoint_slot is not None:
        glue.radix.free_checkpoint(buffer.checkpoint_slot)
    glue.radix.page_pool.decref(buffer.page_ids)
