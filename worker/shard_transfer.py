"""KV transfer between workers of any TP degrees, from rank 0's side.

Every rank has its own backend on its own cache shard (`worker/rank_transfers.py`), so the bytes of
rank r go from the prefill worker's rank s to the decode worker's rank r directly; rank 0 only
coordinates. On the decode worker:
- `expect` opens the sub-transfers of every rank (the followers' through the engine's
  `call_followers`, on the engine thread, between steps) and answers one descriptor that carries
  them all (`shards`) with the layout the receiver expects of its sender;
- `wait` waits for rank 0's own sub-transfers, then polls every rank until all are DONE (each rank
  copies its staging out on arrival when the TP degrees differ) or one FAILED;
- `forget` closes them everywhere.
On the prefill worker the followers open their sub-transfers before the prefill, post layer by
layer from their layer hook, and finish when rank 0 does (`worker/prefill_sender.py`).

A single-rank worker uses the same path when its peer's TP differs (it then merges or splits heads
on arrival); two single-rank workers keep the plain one-descriptor transfer.
"""

from __future__ import annotations

import json
import time

from baton_pb.v1 import worker_pb2
from kvtransfer.base import TransferDescriptor, TransferResult, TransferStatus
from rpc.errors import TransferFailed
from worker.descriptors import descriptor_from_proto, descriptor_to_proto
from worker.rank_transfers import RankTransfers, StagingFull, run_command, sub_transfer_id

POLL_INTERVAL_S = 0.002


class ShardedTransfers:
    def __init__(self, loop, ranks: RankTransfers) -> None:
        self.loop = loop  # worker.engine_loop.EngineLoop
        self.ranks = ranks  # rank 0's own

    @property
    def tp(self) -> int:
        return self.ranks.tp

    # ---- decode side ----------------------------------------------------------------------
    def expect(self, reservation, transfer_id: str, deadline_s: float, source_tp: int) -> worker_pb2.TransferDescriptor:
        command = {
            "op": "expect",
            "transfer_id": transfer_id,
            "src_tp": source_tp,
            "page_ids": list(reservation.page_ids),
            "slot": reservation.state_slot,
            "skip_blocks": reservation.cached_blocks,
            "deadline_s": deadline_s,
        }

        def on_every_rank(engine) -> list[dict]:
            pairs = run_command(self.ranks, command)["pairs"]
            try:
                for reply in self._followers(engine, command):
                    pairs += reply["pairs"]
            except BaseException:
                self._forget_on_engine(engine, transfer_id)
                raise
            return pairs

        pairs = self.loop.call(on_every_rank)
        return envelope(pairs, receiver_tp=self.tp, sender_tp=source_tp)

    def wait(self, transfer_id: str, timeout_s: float) -> TransferResult:
        """DONE once every rank has its shard in its cache; PENDING when `timeout_s` passed first."""
        end = time.monotonic() + timeout_s
        receive = self.ranks.receives.get(transfer_id)
        if receive is None:
            return TransferResult(TransferStatus.FAILED, f"no transfer {transfer_id!r} expected")
        for piece in receive.pieces:  # rank 0's own, off the engine thread
            sub = sub_transfer_id(transfer_id, piece.src_rank, 0)
            result = self.ranks.backend.wait(sub, max(0.0, end - time.monotonic()))
            if result.status is TransferStatus.FAILED:
                return result
            if result.status is not TransferStatus.DONE:
                return TransferResult(TransferStatus.PENDING)
        command = {"op": "poll", "transfer_id": transfer_id}
        while True:
            polls = self.loop.call(lambda engine: [run_command(self.ranks, command), *self._followers(engine, command)])
            failed = [p["reason"] for p in polls if p["status"] == "failed"]
            if failed:
                return TransferResult(TransferStatus.FAILED, "; ".join(failed))
            if all(p["status"] == "done" for p in polls):
                return TransferResult(TransferStatus.DONE, first_token=polls[0]["first_token"])
            if time.monotonic() >= end:
                return TransferResult(TransferStatus.PENDING)
            time.sleep(POLL_INTERVAL_S)

    def forget(self, transfer_id: str) -> None:
        self.loop.call(lambda engine: self._forget_on_engine(engine, transfer_id))

    def _forget_on_engine(self, engine, transfer_id: str) -> None:
        command = {"op": "forget", "transfer_id": transfer_id}
        run_command(self.ranks, command)
        self._followers(engine, command)

    # ---- prefill side ---------------------------------------------------------------------
    def open_followers(self, key: int, pairs: list[dict]) -> None:
        """Before the prefill: the followers open their sub-transfers of the request watched as `key`."""
        command = {"op": "open", "key": key, "pairs": pairs}
        self.loop.call(lambda engine: self._followers(engine, command))

    def finish_followers(self, key: int, page_ids: list[int], slot: int, first_token: int) -> int:
        """After the prefill: the followers post the rest and their manifests; the bytes they sent."""
        command = {"op": "finish", "key": key, "page_ids": list(page_ids), "slot": slot, "first_token": first_token}
        replies = self.loop.call(lambda engine: self._followers(engine, command))
        return sum(int(r["bytes"]) for r in replies)

    def abort_followers(self, key: int, reason: str) -> None:
        command = {"op": "abort", "key": key, "reason": reason}
        self.loop.call(lambda engine: self._followers(engine, command))

    def _followers(self, engine, command: dict) -> list[dict]:
        """Engine thread: the command on every follower rank; their replies (errors raised)."""
        replies = [json.loads(raw) for raw in engine.call_followers(json.dumps(command).encode())]
        for rank, reply in enumerate(replies, start=1):
            if "busy" in reply:
                raise StagingFull(f"rank {rank}: {reply['busy']}")
            if "error" in reply:
                raise TransferFailed(f"rank {rank}: {reply['error']}")
        return replies


def envelope(pairs: list[dict], receiver_tp: int, sender_tp: int) -> worker_pb2.TransferDescriptor:
    """One descriptor carrying every (source rank, destination rank) sub-transfer."""
    return worker_pb2.TransferDescriptor(
        shards=[
            worker_pb2.ShardDescriptor(
                src_rank=p["src_rank"],
                dst_rank=p["dst_rank"],
                descriptor=descriptor_to_proto(TransferDescriptor.from_dict(p["descriptor"])),
            )
            for p in pairs
        ],
        layout=json.dumps({"receiver_tp": receiver_tp, "sender_tp": sender_tp}),
    )


def shard_pairs(message: worker_pb2.TransferDescriptor, my_tp: int) -> list[dict]:
    """The sub-transfers of an envelope, checked against this (sending) worker's TP degree."""
    layout = json.loads(message.layout or "{}")
    if int(layout.get("sender_tp", 1)) != my_tp:
        raise TransferFailed(
            f"the decode worker reserved this transfer for a sender of tp={layout.get('sender_tp', 1)}, "
            f"this prefill worker has tp={my_tp}"
        )
    return [
        {"src_rank": s.src_rank, "dst_rank": s.dst_rank, "descriptor": descriptor_from_proto(s.descriptor).to_dict()}
        for s in message.shards
    ]
