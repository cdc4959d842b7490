"""Shipping one request's KV pages and DeltaNet state to the decode worker, layer by layer, while
the prefill computes (the posting itself: `worker/page_sender.py`).

With several ranks on either side the destination is an envelope of sub-transfers
(`worker/shard_transfer.py`): this process (rank 0) posts to the ones it is the source of from the
sequence's layer callback; the follower ranks are told theirs before the prefill starts and post
from their own layer hook as the same layers finish on their shard (`worker/rank_transfers.py`).
"""

from __future__ import annotations

import logging
import time

from engine.parallel.step_sync import watch_key
from kvtransfer.base import TransferDescriptor
from rpc.errors import TransferFailed
from worker.core import WorkerCore
from worker.descriptors import descriptor_from_proto
from worker.page_sender import PageSender
from worker.rank_transfers import layout_tag
from worker.shard_transfer import shard_pairs

log = logging.getLogger(__name__)


class LayerwiseSender:
    def __init__(self, core: WorkerCore, destination, request_id: str) -> None:
        """`destination`: the decode worker's TransferDescriptor message (plain or an envelope)."""
        self.core = core
        self.request_id = request_id
        self.block_size = core.config.block_size
        self.opened_at = time.perf_counter()
        self.failed: str | None = None
        follower_pairs, mine, extras = self._split(destination)
        config = core.engine.model_config
        self.pages = PageSender(
            core.backend, mine, list(config.attention_layer_ids), len(config.linear_layer_ids),
            core.engine.cache.regions(), extras,
        )  # fmt: skip
        self.key = watch_key(request_id)
        self.followers = bool(follower_pairs)
        if self.followers:
            try:
                core.shards.open_followers(self.key, follower_pairs)
            except BaseException as error:
                self.abort(f"the follower ranks could not open their transfers: {error}")  # those that did too
                raise

    def _split(self, destination) -> tuple[list[dict], list[TransferDescriptor], dict]:
        """(the followers' sub-transfers, this rank's descriptors, manifest extras)."""
        tp = self.core.shards.tp
        if not destination.shards:
            if tp > 1:
                raise TransferFailed(
                    f"the decode worker reserved a transfer from a single-rank sender; this prefill worker has "
                    f"tp={tp} (the router passes the prefill worker's tp in ReserveRequest.source_tp)"
                )
            return [], [descriptor_from_proto(destination)], {}
        pairs = shard_pairs(destination, tp)
        mine = [TransferDescriptor.from_dict(p["descriptor"]) for p in pairs if p["src_rank"] == 0]
        return [p for p in pairs if p["src_rank"] != 0], mine, {"layout": layout_tag(tp, 0)}

    def on_layer_done(self, layer: int, token_start: int, token_end: int) -> None:
        """Engine thread, after `layer` wrote tokens [token_start, token_end): post full blocks."""
        if self.failed:
            return
        try:
            page_ids = self.core.engine.page_ids(self.request_id)  # engine thread: safe
            self.pages.layer_written(layer, page_ids, token_end, self.block_size)
        except Exception as error:  # noqa: BLE001 - recorded; finish() reports it
            log.exception("layer-wise post failed")
            self.failed = str(error)

    def finish(self, result) -> int:
        """Posts what is left and the manifests, on every rank. Returns the bytes sent."""
        if self.failed:
            raise RuntimeError(f"transfer of {self.request_id} failed while posting: {self.failed}")
        page_ids = list(result.page_ids)
        sent = self.pages.finish(page_ids, result.state_slot, result.first_token)
        if self.followers:
            self.followers = False  # finished or failed there: nothing left to abort
            sent += self.core.shards.finish_followers(self.key, page_ids, result.state_slot, result.first_token)
        return sent

    def seconds(self) -> float:
        """Wall time since the transfer opened (it overlaps the prefill compute)."""
        return time.perf_counter() - self.opened_at

    def abort(self, reason: str) -> None:
        self.pages.abort(reason)
        if self.followers:
            self.followers = False
            try:
                self.core.shards.abort_followers(self.key, reason)
            except Exception:  # noqa: BLE001 - best effort; the receivers' deadlines free them anyway
                log.debug("abort on the follower ranks failed", exc_info=True)
