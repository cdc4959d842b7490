"""Scaling the pools to target counts: add workers, or drain the least loaded extras first and
remove them only once they have nothing in flight."""

from __future__ import annotations

import logging

from router.pools.base import PoolCannotScale

log = logging.getLogger(__name__)


def rescale(core, prefill: int, decode: int) -> None:
    if not getattr(core.pool, "can_scale", False):
        raise PoolCannotScale("this router's pool has fixed addresses; scale its deployment instead")
    for role, target in (("prefill", prefill), ("decode", decode)):
        active = [h for h in core.registry.workers(role) if not h.draining]
        for _ in range(target - len(active)):
            member = core.pool.add(role)
            log.info("added %s worker %s", role, member.address)
        extras = sorted(active, key=lambda h: (h.info.load.running_requests, h.info.load.queued_tokens))
        for handle in extras[: max(0, len(active) - target)]:
            log.info("draining %s worker %s", role, handle.worker_id)
            core.drain(handle.worker_id, remove=True)
    core.registry.refresh()
