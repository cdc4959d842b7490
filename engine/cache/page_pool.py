"""`PagePool`: refcounted ids of the KV pages preallocated in `CacheTensors.kv`.

Pure bookkeeping (no tensors): a page is free or held by one or more owners (running sequences,
the radix tree). Each owner holds its own reference; the page returns to the free list when the
last reference is dropped. Every operation is all-or-nothing, so a failed call leaves the pool as
it was.
"""

from __future__ import annotations

from collections.abc import Iterable


class OutOfPages(RuntimeError):
    """Not enough free pages; nothing was allocated."""


class PagePool:
    def __init__(self, num_pages: int) -> None:
        if num_pages < 0:
            raise ValueError(f"num_pages must be >= 0, got {num_pages}")
        self._refcounts = [0] * num_pages
        # Popped from the end: low ids first, which keeps tests and dumps readable.
        self._free = list(range(num_pages - 1, -1, -1))

    @property
    def num_total(self) -> int:
        return len(self._refcounts)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self._refcounts) - len(self._free)

    def allocate(self, n: int) -> list[int]:
        """Take `n` free pages, each with refcount 1. Raises `OutOfPages` (allocating nothing)."""
        if n < 0:
            raise ValueError(f"cannot allocate a negative number of pages ({n})")
        if n > len(self._free):
            raise OutOfPages(f"need {n} pages, only {len(self._free)} of {self.num_total} free")
        ids = [self._free.pop() for _ in range(n)]
        for page in ids:
            self._refcounts[page] = 1
        return ids

    def incref(self, ids: Iterable[int]) -> None:
        """Add one reference to each page (a page listed twice gets two). Pages must be in use."""
        ids = list(ids)
        for page in ids:
            if self.refcount(page) == 0:
                raise ValueError(f"incref of free page {page}")
        for page in ids:
            self._refcounts[page] += 1

    def decref(self, ids: Iterable[int]) -> None:
        """Drop one reference from each page; a page whose count reaches 0 is free again.
        Dropping more references than a page holds raises ValueError and changes nothing."""
        ids = list(ids)
        drops: dict[int, int] = {}
        for page in ids:
            drops[page] = drops.get(page, 0) + 1
        for page, count in drops.items():
            held = self.refcount(page)
            if held < count:
                raise ValueError(f"decref of page {page}: {count} drops but only {held} references")
        for page in ids:
            self._refcounts[page] -= 1
            if self._refcounts[page] == 0:
                self._free.append(page)

    def refcount(self, page: int) -> int:
        if not isinstance(page, int) or not 0 <= page < len(self._refcounts):
            raise ValueError(f"page id {page!r} out of range [0, {len(self._refcounts)})")
        return self._refcounts[page]

    def is_free(self, page: int) -> bool:
        return self.refcount(page) == 0
