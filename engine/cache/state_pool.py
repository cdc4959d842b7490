"""`StatePool`: ids of DeltaNet state slots (rows of `CacheTensors.conv` / `.ssm`).

The runtime partitions the slot ids into two pools: live slots (one per running sequence) and
checkpoint slots (owned by the radix tree). A slot is owned by exactly one holder, so there is no
refcount: allocate hands it out, free takes it back, a double free raises.
"""

from __future__ import annotations

from collections.abc import Iterable


class OutOfSlots(RuntimeError):
    """No free state slot; nothing was allocated."""


class StatePool:
    def __init__(self, slot_ids: Iterable[int]) -> None:
        ids = list(slot_ids)
        if len(set(ids)) != len(ids):
            raise ValueError("slot ids must be distinct")
        for slot in ids:
            if not isinstance(slot, int) or slot < 0:
                raise ValueError(f"slot ids must be non-negative ints, got {slot!r}")
        self._all = frozenset(ids)
        self._free = list(reversed(ids))  # popped from the end: the first given id goes out first
        self._free_set = set(ids)

    @property
    def num_total(self) -> int:
        return len(self._all)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self._all) - len(self._free)

    @property
    def slot_ids(self) -> frozenset[int]:
        return self._all

    def allocate(self) -> int:
        if not self._free:
            raise OutOfSlots(f"all {len(self._all)} state slots are in use")
        slot = self._free.pop()
        self._free_set.discard(slot)
        return slot

    def free(self, slot: int) -> None:
        if slot not in self._all:
            raise ValueError(f"slot {slot!r} does not belong to this pool")
        if slot in self._free_set:
            raise ValueError(f"double free of state slot {slot}")
        self._free.append(slot)
        self._free_set.add(slot)

    def is_free(self, slot: int) -> bool:
        if slot not in self._all:
            raise ValueError(f"slot {slot!r} does not belong to this pool")
        return slot in self._free_set
