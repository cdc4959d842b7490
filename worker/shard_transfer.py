"""KV transfer for a worker of several ranks: not built yet, refused with a reason.

Each rank owns the pages and state of its heads, so a transfer must ship rank r's shard to rank r
of the peer (resharding in `worker/` when the TP degrees differ). Until that exists, a multi-rank
worker serves what it computes itself (decode-local prefill, prefix cache) and every transfer call
fails with UNAVAILABLE and this reason, never with rank 0's shard alone.
"""

from __future__ import annotations

from rpc.errors import TransferFailed

REASON = "KV transfer between multi-rank (tp/ep > 1) workers is not implemented yet"


class ShardedTransferRefused:
    def __init__(self, tp: int, ep: int) -> None:
        self.reason = f"{REASON} (this worker: tp={tp}, ep={ep})"

    def register(self, regions) -> None:
        pass

    def _refuse(self, *args, **kwargs):
        raise TransferFailed(self.reason)

    expect = open_send = expose = read = wait = _refuse

    def forget(self, transfer_id: str) -> None:
        pass

    def close(self) -> None:
        pass
