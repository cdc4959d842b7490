"""How `LLMEngine` builds speculative decoding: the MTP head from the checkpoint, k spare state
slots per live slot, the slot pool that can promote them, and the `SpecDecoder`."""

from __future__ import annotations

import logging

from engine.engine_config import EngineConfig
from engine.models.mtp import MtpHead
from engine.parallel.spec_sync import LeaderMtpHead
from engine.speculative.decoder import SpecDecoder
from engine.speculative.drafter import Drafter
from engine.speculative.slots import SpecSlotPool

log = logging.getLogger(__name__)


def load_head(model, config: EngineConfig) -> MtpHead | None:
    """The MTP head when speculation is asked for and the checkpoint has one, else None. Rank 0
    of a group gets the head that broadcasts its calls to the follower ranks."""
    if config.num_speculative_tokens == 0:
        return None
    head = (LeaderMtpHead if model.comm.active else MtpHead).from_model(model)
    if head is None:
        log.info("checkpoint has no MTP head: decoding without speculation")
    return head


def spare_slots(head: MtpHead | None, config: EngineConfig, live: int) -> int:
    return live * config.num_speculative_tokens if head is not None else 0


def live_pool(live: int, spare_start: int, spares: int) -> SpecSlotPool:
    return SpecSlotPool(range(live), range(spare_start, spare_start + spares))


def decoder(engine, head: MtpHead) -> SpecDecoder:
    return SpecDecoder(engine, Drafter(head), engine.config.num_speculative_tokens)
