"""One rank's side of the KV transfers of a multi-rank worker: every rank (rank 0 and each
follower process) has its own transfer backend on its own cache shard, so rank r's pages and state
travel from rank s of the prefill worker straight to rank r of the decode worker.

Receiving (decode worker): `expect` opens one sub-transfer per source rank this rank needs
(`worker/reshard.py::plan`): into the cache when the sender's slice is this rank's, else into
staging in the sender's layout; `poll` reports progress and, once every sub-transfer is DONE and
its sender's layout (manifest extras) is the one expected, copies staging out into the cache.
Sending (prefill worker): a follower opens its sub-transfers of a request before the prefill
(`open_sends`), posts each attention layer's full blocks from its layer hook as its shard of the
layer is written (`layer_done`), and the rest and the manifest when rank 0 says the prefill is
done (`finish_sends`). Rank 0 does the same from the sequence's callback (`worker/prefill_sender.py`).

Followers get rank 0's commands as JSON through the engine's `call_followers`
(`FollowerTransfers`); rank 0 runs the same commands itself (`worker/shard_transfer.py`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.engine_config import EngineConfig
from engine.model_config import ModelConfig
from engine.model_runner import ModelRunner, SeqChunk
from kvtransfer.base import TransferBackend, TransferDescriptor, TransferStatus, UnknownTransfer
from kvtransfer.factory import create_backend
from rpc.errors import AdmissionRejected
from worker.page_sender import PageSender
from worker.reshard import Piece, cache_indices, copy_out, plan, staging_shape

log = logging.getLogger(__name__)
STATE_REGIONS = ("conv", "ssm")


def layout_tag(tp: int, rank: int) -> str:
    """The sender's layout as it travels in the manifest (opaque to kvtransfer)."""
    return f"tp={tp},rank={rank}"


def sub_transfer_id(transfer_id: str, src_rank: int, dst_rank: int) -> str:
    return f"{transfer_id}/s{src_rank}d{dst_rank}"


class StagingFull(AdmissionRejected):
    """Every staging unit of a sender layout is in use: the caller retries shortly."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_ms=200)


@dataclass(frozen=True, slots=True)
class StagingSize:
    """Staging per sender layout, on each rank of a decode worker that reshards."""

    tokens: int = 16384  # KV positions (rounded up to pages)
    slots: int = 4  # DeltaNet states: one per resharded transfer in flight

    def pages(self, block_size: int) -> int:
        return max(1, -(-self.tokens // block_size))


@dataclass
class StagingPool:
    """Units in one sender layout (one source tp), taken per transfer and given back after copy-out."""

    tensors: dict[str, torch.Tensor]
    free: dict[str, list[int]]

    def take(self, region: str, count: int, what: str) -> list[int]:
        free = self.free[region]
        if count > len(free):
            raise StagingFull(
                f"resharding needs {count} staging {what} but {len(free)} of {self.tensors[region].shape[1]} are free "
                "(--reshard-staging-tokens and --reshard-staging-slots size them)"
            )
        taken, self.free[region] = free[:count], free[count:]
        return taken

    def give(self, region: str, units: list[int]) -> None:
        self.free[region].extend(u for u in units if u >= 0)


@dataclass
class Receive:
    src_tp: int
    pieces: list[Piece]
    page_ids: list[int]
    slot: int
    skip_blocks: int
    staged: dict[tuple[int, str], list[int]] = field(default_factory=dict)  # (src rank, region) -> units
    applied: bool = False


class RankTransfers:
    def __init__(
        self,
        backend: TransferBackend,
        cache: dict[str, torch.Tensor],
        config: ModelConfig,
        tp: int,
        rank: int,
        staging: StagingSize,
        block_size: int,
    ) -> None:
        self.backend, self.config, self.tp, self.rank = backend, config, tp, rank
        self.cache = {name: t for name, t in cache.items() if t.numel()}
        self.staging_units = {"kv": staging.pages(block_size), "conv": staging.slots, "ssm": staging.slots}
        self.block_size = block_size
        self.pools: dict[int, StagingPool] = {}
        self.receives: dict[str, Receive] = {}
        self.sends: dict[int, PageSender] = {}  # watch key -> a follower's sends of that request
        self._lock = threading.Lock()
        # A receiver of another layout stages under "<region>~tp<sender tp>": the sender posts from
        # its own cache under that name too, so both ends of the sub-transfer name the same region.
        self.registered = {**self.cache, **{staging_name(r, tp): t for r, t in self.cache.items()}}
        backend.register(self.registered)

    # ---- receiving ------------------------------------------------------------------------
    def expect(
        self, transfer_id: str, src_tp: int, page_ids: list[int], slot: int, skip_blocks: int, deadline_s: float
    ) -> list[dict]:
        """Open this rank's sub-transfers; their descriptors (as dicts) with source and destination rank."""
        pieces = plan(self.config, src_tp, self.tp, self.rank, tuple(self.cache))
        receive = Receive(src_tp, pieces, list(page_ids), slot, skip_blocks)
        out = []
        with self._lock:
            if transfer_id in self.receives:
                raise ValueError(f"transfer {transfer_id!r} is already expected on rank {self.rank}")
            self.receives[transfer_id] = receive
        try:
            for piece in pieces:
                units, skip_regions = self._destination(receive, piece)
                descriptor = self.backend.expect(
                    sub_transfer_id(transfer_id, piece.src_rank, self.rank),
                    units,
                    deadline_s,
                    skip_blocks=skip_blocks,
                    skip_regions=skip_regions,
                )
                out.append({"src_rank": piece.src_rank, "dst_rank": self.rank, "descriptor": descriptor.to_dict()})
        except BaseException:
            self.forget(transfer_id)
            raise
        return out

    def _destination(self, receive: Receive, piece: Piece) -> tuple[dict[str, list[int]], tuple[str, ...]]:
        """The sub-transfer's destination units: the cache's, or staging taken for it."""
        if piece.direct:
            units = {r: list(receive.page_ids) if r == "kv" else [receive.slot] for r in piece.regions}
            return units, ("kv",)
        pool = self._pool(receive.src_tp)
        units = {}
        for region in piece.regions:
            name = staging_name(region, receive.src_tp)
            if region == "kv":
                fresh = len(receive.page_ids) - receive.skip_blocks
                taken = pool.take(name, fresh, "pages")
                units[name] = [-1] * receive.skip_blocks + taken  # skipped positions: placeholders
            else:
                taken = pool.take(name, 1, "state slots")
                units[name] = taken
            receive.staged[(piece.src_rank, region)] = taken
        return units, (staging_name("kv", receive.src_tp),)

    def _pool(self, src_tp: int) -> StagingPool:
        """The staging of sender layout `src_tp`, registered with the backend on first use."""
        pool = self.pools.get(src_tp)
        if pool is not None:
            return pool
        widths = {r: len(v) for r, v in cache_indices(self.config, src_tp, 0).items()}
        tensors, free = {}, {}
        for region, tensor in self.cache.items():
            units = self.staging_units[region]
            tensors[staging_name(region, src_tp)] = torch.zeros(
                staging_shape(region, tensor, widths[region], units), dtype=tensor.dtype, device=tensor.device
            )
            free[staging_name(region, src_tp)] = list(range(units))
        self.pools[src_tp] = pool = StagingPool(tensors, free)
        self.registered.update(tensors)  # never an alias's name: a worker stages only other tp degrees
        self.backend.register(self.registered)
        return pool

    def poll(self, transfer_id: str) -> dict:
        """{"status": "done" | "pending" | "failed", "reason", "first_token"}; on done the
        staged units are in the cache (once)."""
        receive = self.receives.get(transfer_id)
        if receive is None:
            return {"status": "failed", "reason": f"rank {self.rank} expects no transfer {transfer_id!r}"}
        first_token = None
        for piece in receive.pieces:
            sub = sub_transfer_id(transfer_id, piece.src_rank, self.rank)
            status, reason = self.backend.status(sub)
            if status is TransferStatus.FAILED:
                return {"status": "failed", "reason": f"rank {self.rank} from source rank {piece.src_rank}: {reason}"}
            if status is not TransferStatus.DONE:
                return {"status": "pending"}
            result = self.backend.wait(sub, 0.0)
            sender = str(result.extras.get("layout", ""))
            if sender != layout_tag(receive.src_tp, piece.src_rank):
                return {"status": "failed", "reason": f"rank {self.rank}: expected a sender of layout "
                        f"{layout_tag(receive.src_tp, piece.src_rank)}, the manifest says {sender!r}"}  # fmt: skip
            first_token = result.first_token if first_token is None else first_token
        if not receive.applied:
            self._copy_out(receive)
            receive.applied = True
        return {"status": "done", "first_token": first_token}

    def _copy_out(self, receive: Receive) -> None:
        pool = self.pools.get(receive.src_tp)
        for piece in receive.pieces:
            if piece.direct:
                continue
            for region, runs in piece.runs.items():
                staged = receive.staged[(piece.src_rank, region)]
                dst = receive.page_ids[receive.skip_blocks :] if region == "kv" else [receive.slot]
                copy_out(region, self.cache[region], pool.tensors[staging_name(region, receive.src_tp)], runs, dst, staged)

    def forget(self, transfer_id: str) -> None:
        with self._lock:
            receive = self.receives.pop(transfer_id, None)
        if receive is None:
            return
        for piece in receive.pieces:
            with contextlib.suppress(UnknownTransfer):  # never opened (a failed expect) or dropped
                self.backend.forget(sub_transfer_id(transfer_id, piece.src_rank, self.rank))
        pool = self.pools.get(receive.src_tp)
        for (_, region), units in receive.staged.items():
            pool.give(staging_name(region, receive.src_tp), units)

    # ---- sending (followers; rank 0 posts from its own layer callback) -------------------
    def open_sends(self, key: int, pairs: list[dict]) -> None:
        """Before the prefill: this rank's sub-transfers of the request watched as `key`."""
        mine = [TransferDescriptor.from_dict(p["descriptor"]) for p in pairs if p["src_rank"] == self.rank]
        if key in self.sends:
            raise ValueError(f"rank {self.rank} already sends a request with key {key}")
        cfg = self.config
        self.sends[key] = PageSender(
            self.backend, mine, list(cfg.attention_layer_ids), len(cfg.linear_layer_ids), self.cache,
            {"layout": layout_tag(self.tp, self.rank)},
        )  # fmt: skip

    def layer_done(self, chunk: SeqChunk, layer: int) -> None:
        """A layer of a watched chunk is in this rank's cache: post its full blocks."""
        sender = self.sends.get(chunk.watch_key)
        if sender is not None:
            sender.layer_written(layer, chunk.block_table, chunk.start_pos + len(chunk.token_ids), self.block_size)

    def finish_sends(self, key: int, page_ids: list[int], slot: int, first_token: int) -> int:
        sender = self.sends.pop(key, None)
        if sender is None:
            raise ValueError(f"rank {self.rank} sends no request with key {key}")
        try:
            return sender.finish(page_ids, slot, first_token)
        except BaseException as error:
            sender.abort(f"rank {self.rank} failed to send: {error}")
            raise

    def abort_sends(self, key: int, reason: str) -> None:
        sender = self.sends.pop(key, None)
        if sender is not None:
            sender.abort(reason)


def staging_name(region: str, src_tp: int) -> str:
    return f"{region}~tp{src_tp}"


class FollowerTransfers:
    """A follower rank's `FollowerHooks`: rank 0's transfer commands and the layer-by-layer posts.
    Its backend registers the cache at the first command (the cache exists once rank 0 sized it)."""

    def __init__(self, transfer: str, staging: StagingSize, model_dir: Path, config: EngineConfig, rank: int) -> None:
        self.transfer, self.staging, self.config, self.rank = transfer, staging, config, rank
        self.model_config = ModelConfig.from_json(model_dir)
        self.ranks: RankTransfers | None = None

    def _ranks(self, runner: ModelRunner) -> RankTransfers:
        if self.ranks is None:
            self.ranks = RankTransfers(
                create_backend(self.transfer), runner.cache.regions(), self.model_config, self.config.tp,
                self.rank, self.staging, self.config.block_size,
            )  # fmt: skip
        return self.ranks

    def call(self, runner: ModelRunner, payload: bytes) -> bytes:
        try:
            reply = run_command(self._ranks(runner), json.loads(payload))
        except StagingFull as busy:
            reply = {"busy": str(busy)}
        return json.dumps(reply).encode()

    def layer_done(self, runner: ModelRunner, chunk: SeqChunk, layer: int) -> None:
        if self.ranks is not None:
            self.ranks.layer_done(chunk, layer)


def follower_hooks_factory(transfer: str, staging: StagingSize):
    """Picklable: travels to the spawned follower processes (engine/parallel/ranks.py)."""
    return functools.partial(FollowerTransfers, transfer, staging)


def run_command(ranks: RankTransfers, command: dict) -> dict:
    """One command from rank 0, run on this rank; rank 0 runs the same for itself."""
    op = command["op"]
    if op == "expect":
        return {"pairs": ranks.expect(
            command["transfer_id"], command["src_tp"], command["page_ids"], command["slot"],
            command["skip_blocks"], command["deadline_s"],
        )}  # fmt: skip
    if op == "poll":
        return ranks.poll(command["transfer_id"])
    if op == "forget":
        ranks.forget(command["transfer_id"])
        return {}
    if op == "open":
        ranks.open_sends(command["key"], command["pairs"])
        return {}
    if op == "finish":
        return {"bytes": ranks.finish_sends(command["key"], command["page_ids"], command["slot"], command["first_token"])}
    if op == "abort":
        ranks.abort_sends(command["key"], command["reason"])
        return {}
    raise ValueError(f"unknown transfer command {op!r}")
