"""`SpecSlotPool`: the live state-slot pool of an engine that speculates.

Each live sequence holds one slot from the live ids (what `StatePool` hands out) and, while it
speculates, k spare slots from a separate spare range. A verify pass writes the state after each of
its k+1 positions into [live, spare...]; acceptance then `promote`s the slot of the last accepted
position to be the live one and the others become the spares: the group of slots a sequence owns
never changes, only which member is live. `free(live)` returns every member to its own range, so
the block manager frees a speculating sequence exactly as any other.
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.cache.state_pool import OutOfSlots, StatePool


class SpecSlotPool(StatePool):
    def __init__(self, live_ids: Iterable[int], spare_ids: Iterable[int]) -> None:
        super().__init__(live_ids)
        self.spare_pool = StatePool(spare_ids)
        if self.slot_ids & self.spare_pool.slot_ids:
            raise ValueError("live and spare slot ids overlap")
        self._spares: dict[int, list[int]] = {}  # live slot -> its spares

    def spares(self, live: int) -> list[int]:
        return list(self._spares.get(live, ()))

    def attach_spares(self, live: int, count: int) -> bool:
        """Give the sequence on `live` `count` spare slots (keeps the ones it has); False when the
        spare range is short (nothing changes then)."""
        held = self._spares.get(live, [])
        need = count - len(held)
        if need <= 0:
            return True
        if self.spare_pool.num_free < need:
            return False
        try:
            fresh = [self.spare_pool.allocate() for _ in range(need)]
        except OutOfSlots:  # pragma: no cover - checked above
            return False
        self._spares[live] = held + fresh
        return True

    def promote(self, live: int, new_live: int) -> None:
        """Make `new_live` (one of `live`'s spares) the live slot; `live` becomes a spare."""
        if new_live == live:
            return
        if new_live not in self._spares.get(live, ()):
            raise ValueError(f"slot {new_live} is not a spare of live slot {live}")
        spares = self._spares.pop(live)
        spares[spares.index(new_live)] = live
        self._spares[new_live] = spares

    def free(self, slot: int) -> None:
        for member in [slot, *self._spares.pop(slot, [])]:
            if member in self.slot_ids:
                super().free(member)
            else:
                self.spare_pool.free(member)

    def is_free(self, slot: int) -> bool:
        if slot in self.spare_pool.slot_ids:
            return self.spare_pool.is_free(slot)
        return super().is_free(slot)
