"""Shipping one request's KV pages and DeltaNet state to the decode worker, layer by layer.

Attention layer `a` (the a-th full-attention layer) lives in region "kv" at layer index `a`;
DeltaNet layer `d` in regions "conv" and "ssm" at index `d`. Destination pages are the
descriptor's, in block order: posts are positional from block 0, and the backend drops the first
`skip_blocks` (the decode side already holds that prefix), so they cost nothing on the wire.

With several ranks on either side the destination is an envelope of sub-transfers
(`worker/shard_transfer.py`): this process (rank 0) posts to the ones it is the source of, layer
by layer, under the region names the receiver gave (`kv~tp1` when it stages in this worker's
layout); the follower ranks post theirs when the prefill is done.
"""

from __future__ import annotations

import logging
import threading
import time

from kvtransfer.base import TransferDescriptor
from rpc.errors import TransferFailed
from worker.core import WorkerCore
from worker.descriptors import descriptor_from_proto
from worker.rank_transfers import layout_tag
from worker.shard_transfer import shard_pairs

log = logging.getLogger(__name__)


class _Target:
    """One sub-transfer this rank sends: its handle and how far each attention layer got."""

    def __init__(self, handle, descriptor: TransferDescriptor, attention_layers) -> None:
        self.handle, self.descriptor = handle, descriptor
        names = {name.split("~")[0]: name for name in descriptor.dst_units}
        self.kv, self.conv, self.ssm = names.get("kv"), names.get("conv"), names.get("ssm")
        self.num_dst_pages = len(descriptor.dst_units.get(self.kv, ())) if self.kv else 0
        self.posted_blocks = dict.fromkeys(attention_layers, 0)


class LayerwiseSender:
    def __init__(self, core: WorkerCore, destination, request_id: str) -> None:
        """`destination`: the decode worker's TransferDescriptor message (plain or an envelope)."""
        self.core = core
        self.request_id = request_id
        config = core.engine.model_config
        self.block_size = core.config.block_size
        self.attention_index = {layer: i for i, layer in enumerate(config.attention_layer_ids)}
        self.linear_index = {layer: i for i, layer in enumerate(config.linear_layer_ids)}
        self.follower_pairs, mine, self.extras = self._split(destination)
        regions = core.engine.cache.regions()
        self.unit_bytes = {name: tensor[0, 0].nbytes for name, tensor in regions.items() if tensor.numel()}
        self.bytes_posted = 0
        self.opened_at = time.perf_counter()
        self._targets: list[_Target] = []
        try:
            for descriptor in mine:
                handle = core.backend.open_send(descriptor)
                self._targets.append(_Target(handle, descriptor, self.attention_index.values()))
        except BaseException as error:
            self.abort(f"opening the transfer failed: {error}")
            raise
        self._lock = threading.Lock()
        self.failed: str | None = None

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
        if self.failed or layer not in self.attention_index:
            return
        try:
            page_ids = self.core.engine.page_ids(self.request_id)  # engine thread: safe
            self._post_kv(self.attention_index[layer], page_ids, full_blocks=token_end // self.block_size)
        except Exception as error:  # noqa: BLE001 - recorded; finish() reports it
            log.exception("layer-wise post failed")
            self.failed = str(error)

    def finish(self, result) -> int:
        """Posts what is left (cached pages, the partial last block, the state) and the manifest;
        then the follower ranks send their shards. Returns the bytes sent."""
        if self.failed:
            raise RuntimeError(f"transfer of {self.request_id} failed while posting: {self.failed}")
        page_ids = list(result.page_ids)
        for target in self._targets:
            if target.kv and len(page_ids) != target.num_dst_pages:
                raise ValueError(
                    f"prefill produced {len(page_ids)} pages but the decode worker reserved {target.num_dst_pages}"
                )
        for region_layer in self.attention_index.values():
            self._post_kv(region_layer, page_ids, full_blocks=len(page_ids))
        for target in self._targets:
            for state, name in (("conv", target.conv), ("ssm", target.ssm)):
                if name is None:
                    continue
                for region_layer in self.linear_index.values():
                    target.handle.post(name, region_layer, [result.state_slot])
                self.bytes_posted += self.unit_bytes[state] * len(self.linear_index)
            target.handle.finish(result.first_token, self.extras)
        if self.follower_pairs:
            self.bytes_posted += self.core.shards.send_followers(
                self.follower_pairs, page_ids, result.state_slot, result.first_token
            )
        return self.bytes_posted

    def seconds(self) -> float:
        """Wall time since the transfer opened (it overlaps the prefill compute)."""
        return time.perf_counter() - self.opened_at

    def abort(self, reason: str) -> None:
        for target in self._targets:
            try:
                target.handle.abort(reason)
            except Exception:  # noqa: BLE001 - best effort; the receiver's deadline frees it anyway
                log.debug("abort of transfer failed", exc_info=True)

    def _post_kv(self, region_layer: int, page_ids: list[int], full_blocks: int) -> None:
        with self._lock:
            for target in self._targets:
                if target.kv is None:
                    continue
                start = target.posted_blocks[region_layer]
                end = min(full_blocks, len(page_ids))
                if end <= start:
                    continue
                target.handle.post(target.kv, region_layer, page_ids[start:end])
                target.posted_blocks[region_layer] = end
                # the backend drops the blocks the decode side already holds: count only the rest
                sent = end - max(start, int(target.descriptor.skip_blocks))
                self.bytes_posted += max(0, sent) * self.unit_bytes["kv"]
