"""An independent, obviously-correct model of the index semantics (plain sets, no flags)."""

from __future__ import annotations

from collections import defaultdict

from prefix_index import IndexEvent, PrefixHit


class ReferenceIndex:
    """No clocks: a worker is live while it holds a lease of its current epoch."""

    def __init__(self) -> None:
        self.epoch: dict[str, int] = {}
        self.lease: dict[str, int] = {}
        self.blocks: dict[tuple[str, str], set[int]] = defaultdict(set)
        self.checkpoints: dict[tuple[str, str], set[int]] = defaultdict(set)

    def _enter_epoch(self, worker: str, epoch: int) -> bool:
        if worker in self.epoch and epoch < self.epoch[worker]:
            return False
        if self.epoch.get(worker) != epoch:
            self._wipe(worker)
            self.epoch[worker] = epoch
        return True

    def _wipe(self, worker: str) -> None:
        for key in [k for k in self.blocks if k[0] == worker]:
            del self.blocks[key]
        for key in [k for k in self.checkpoints if k[0] == worker]:
            del self.checkpoints[key]

    def publish(self, worker: str, epoch: int, namespace: str, events: list[IndexEvent]) -> bool:
        if not self._enter_epoch(worker, epoch):
            return False
        for event in events:
            for store, hashes in (
                (self.blocks, event.block_hashes),
                (self.checkpoints, event.checkpoint_hashes),
            ):
                held = store[(worker, namespace)]
                if event.kind == "stored":
                    held.update(hashes)
                else:
                    held.difference_update(hashes)
        return True

    def heartbeat(self, worker: str, epoch: int) -> None:
        assert self._enter_epoch(worker, epoch)
        self.lease[worker] = epoch

    def clear(self, worker: str) -> None:
        self._wipe(worker)
        self.epoch.pop(worker, None)
        self.lease.pop(worker, None)

    def lookup(self, namespace: str, hashes: list[int]) -> dict[str, PrefixHit]:
        hits = {}
        for worker, epoch in self.lease.items():
            if self.epoch.get(worker) != epoch:
                continue
            blocks, checkpoints = self.blocks[(worker, namespace)], self.checkpoints[(worker, namespace)]
            run = 0
            while run < len(hashes) and hashes[run] in blocks:
                run += 1
            deepest = max((i + 1 for i in range(run) if hashes[i] in checkpoints), default=0)
            if run:
                hits[worker] = PrefixHit(worker, run, deepest)
        return hits
