"""Shipping one request's KV pages and DeltaNet state to the decode worker, layer by layer.

Attention layer `a` (the a-th full-attention layer) lives in region "kv" at layer index `a`;
DeltaNet layer `d` in regions "conv" and "ssm" at index `d`. Destination pages are the
descriptor's, in block order: posts are positional from block 0, and the backend drops the first
`skip_blocks` (the decode side already holds that prefix), so they cost nothing on the wire.
"""

from __future__ import annotations

import logging
import threading
import time

from worker.core import WorkerCore

log = logging.getLogger(__name__)


class LayerwiseSender:
    def __init__(self, core: WorkerCore, descriptor, request_id: str) -> None:
        self.core = core
        self.descriptor = descriptor
        self.request_id = request_id
        config = core.engine.model_config
        self.block_size = core.config.block_size
        self.attention_index = {layer: i for i, layer in enumerate(config.attention_layer_ids)}
        self.linear_index = {layer: i for i, layer in enumerate(config.linear_layer_ids)}
        self.num_dst_pages = len(descriptor.dst_units.get("kv", ()))
        # blocks already posted per attention layer (posts go out in block order, from block 0)
        self.posted_blocks = dict.fromkeys(self.attention_index.values(), 0)
        self.sent_state = False
        regions = core.engine.cache.regions()
        self.unit_bytes = {name: tensor[0, 0].nbytes for name, tensor in regions.items() if tensor.numel()}
        self.bytes_posted = 0
        self.opened_at = time.perf_counter()
        self._handle = core.backend.open_send(descriptor)
        self._lock = threading.Lock()
        self.failed: str | None = None

    def on_layer_done(self, layer: int, token_start: int, token_end: int) -> None:
        """Engine thread, after `layer` wrote tokens [token_start, token_end): post full blocks."""
        if self.failed or layer not in self.attention_index:
            return
        try:
            page_ids = self.core.engine.page_ids(self.request_id)  # engine thread: safe
            self._post_kv(self.attention_index[layer], page_ids, full_blocks=token_end // self.block_size)
        except Exception as error:  # noqa: BLE001 - recorded; finish() reports it
            log.exception("layer-wise post failed")
            self.failed = str(error)

    def finish(self, result) -> int:
        """Posts what is left (cached pages, the partial last block, the state) and the manifest."""
        if self.failed:
            raise RuntimeError(f"transfer of {self.request_id} failed while posting: {self.failed}")
        page_ids = list(result.page_ids)
        if len(page_ids) != self.num_dst_pages:
            raise ValueError(
                f"prefill produced {len(page_ids)} pages but the decode worker reserved {self.num_dst_pages}"
            )
        for region_layer in self.attention_index.values():
            self._post_kv(region_layer, page_ids, full_blocks=len(page_ids))
        if "conv" in self.descriptor.dst_units:
            for region_layer in self.linear_index.values():
                self._handle.post("conv", region_layer, [result.state_slot])
                self._handle.post("ssm", region_layer, [result.state_slot])
                self.bytes_posted += self.unit_bytes["conv"] + self.unit_bytes["ssm"]
        self._handle.finish(result.first_token)
        return self.bytes_posted

    def seconds(self) -> float:
        """Wall time since the transfer opened (it overlaps the prefill compute)."""
        return time.perf_counter() - self.opened_at

    def abort(self, reason: str) -> None:
        try:
            self._handle.abort(reason)
        except Exception:  # noqa: BLE001 - best effort; the receiver's deadline frees it anyway
            log.debug("abort of transfer failed", exc_info=True)

    def _post_kv(self, region_layer: int, page_ids: list[int], full_blocks: int) -> None:
        with self._lock:
            start = self.posted_blocks[region_layer]
            end = min(full_blocks, len(page_ids))
            if end <= start:
                return
            self._handle.post("kv", region_layer, page_ids[start:end])
            self.posted_blocks[region_layer] = end
            # the backend drops the blocks the decode side already holds: count only the rest
            sent = end - max(start, int(self.descriptor.skip_blocks))
            self.bytes_posted += max(0, sent) * self.unit_bytes["kv"]
