"""Posting one request's KV pages, layer by layer, and then its DeltaNet state, to the
sub-transfers one rank is the source of (one for a plain transfer; several when a decode rank of
another TP degree needs this rank's heads too). Rank 0 drives it from the sequence's layer callback
(`worker/prefill_sender.py`), a follower rank from its layer hook (`worker/rank_transfers.py`).

Attention layer `a` (the a-th full-attention layer) lives in region "kv" at layer index `a`;
DeltaNet layer `d` in regions "conv" and "ssm" at index `d`. Posts are positional from block 0 in
the descriptor's page order, under the region names the receiver gave (`kv~tp1` when it stages in
this worker's layout); the backend drops the first `skip_blocks`, which the receiver holds.
"""

from __future__ import annotations

import logging
import threading

import torch

from kvtransfer.base import TransferBackend, TransferDescriptor

log = logging.getLogger(__name__)


class _Target:
    """One sub-transfer: its handle, its region names and how far each attention layer got."""

    def __init__(self, handle, descriptor: TransferDescriptor, num_attention: int) -> None:
        self.handle, self.descriptor = handle, descriptor
        names = {name.split("~")[0]: name for name in descriptor.dst_units}
        self.kv, self.conv, self.ssm = names.get("kv"), names.get("conv"), names.get("ssm")
        self.num_dst_pages = len(descriptor.dst_units.get(self.kv, ())) if self.kv else 0
        self.posted_blocks = [0] * num_attention


class PageSender:
    def __init__(
        self,
        backend: TransferBackend,
        descriptors: list[TransferDescriptor],
        attention_layer_ids: list[int],
        num_linear_layers: int,
        cache: dict[str, torch.Tensor],
        extras: dict[str, int | str] | None = None,
    ) -> None:
        self.attention_index = {layer: i for i, layer in enumerate(attention_layer_ids)}
        self.num_linear = num_linear_layers
        self.unit_bytes = {name: t[0, 0].nbytes for name, t in cache.items() if t.numel()}
        self.extras = dict(extras or {})
        self.bytes_posted = 0
        self._lock = threading.Lock()
        self.targets: list[_Target] = []
        try:
            for descriptor in descriptors:
                self.targets.append(_Target(backend.open_send(descriptor), descriptor, len(attention_layer_ids)))
        except BaseException as error:
            self.abort(f"opening the transfer failed: {error}")
            raise

    def layer_written(self, layer: int, page_ids: list[int], written_tokens: int, block_size: int) -> None:
        """Decoder layer `layer` holds the first `written_tokens` tokens: post its full blocks."""
        if layer in self.attention_index:
            self._post_kv(self.attention_index[layer], page_ids, written_tokens // block_size)

    def finish(self, page_ids: list[int], state_slot: int, first_token: int) -> int:
        """Post what is left (cached pages, the partial last block, the state) and the manifests.
        Returns the bytes posted by this sender."""
        for target in self.targets:
            if target.kv and len(page_ids) != target.num_dst_pages:
                raise ValueError(
                    f"prefill produced {len(page_ids)} pages but the decode worker reserved {target.num_dst_pages}"
                )
        for index in self.attention_index.values():
            self._post_kv(index, page_ids, len(page_ids))
        for target in self.targets:
            for region, name in (("conv", target.conv), ("ssm", target.ssm)):
                if name is None:
                    continue
                for layer in range(self.num_linear):
                    target.handle.post(name, layer, [state_slot])
                self.bytes_posted += self.unit_bytes[region] * self.num_linear
            target.handle.finish(first_token, self.extras)
        return self.bytes_posted

    def abort(self, reason: str) -> None:
        for target in self.targets:
            try:
                target.handle.abort(reason)
            except Exception:  # noqa: BLE001 - best effort; the receiver's deadline frees it anyway
                log.debug("abort of transfer failed", exc_info=True)

    def _post_kv(self, index: int, page_ids: list[int], full_blocks: int) -> None:
        with self._lock:
            for target in self.targets:
                if target.kv is None:
                    continue
                start, end = target.posted_blocks[index], min(full_blocks, len(page_ids))
                if end <= start:
                    continue
                target.handle.post(target.kv, index, page_ids[start:end])
                target.posted_blocks[index] = end
                # the backend drops the blocks the decode side already holds: count only the rest
                sent = end - max(start, int(target.descriptor.skip_blocks))
                self.bytes_posted += max(0, sent) * self.unit_bytes["kv"]
