"""Fetching a cached prefix from the peer worker that holds it (global prefix index, step 5).

Holder: `ExposePrefix` pins the longest checkpoint-ended cached prefix of the prompt and exposes
its pages + checkpoint through the transfer backend; `ReleaseExposed` (or the deadline) unpins.
Reader (the prefill worker the router chose): asks the holder to expose, takes local pages + a
checkpoint slot, reads, verifies (the backend's manifest), and inserts the prefix into its own
radix tree, so the prefill that follows matches it and computes only the rest. Any failure falls
back to recomputing, counted in `fetch_failures`."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import grpc

from baton_pb.v1 import worker_pb2, worker_pb2_grpc
from engine.cache.prefix_cache import PrefixCache, PrefixUnavailable
from rpc.grpc_server import insecure_or_tls_channel
from worker.descriptors import descriptor_from_proto, descriptor_to_proto

log = logging.getLogger(__name__)
EXPOSE_DEADLINE_S = 30.0


def _prefix_cache(engine) -> PrefixCache:
    if engine.prefix_cache is None:
        raise PrefixUnavailable("this engine runs without a prefix cache")
    return engine.prefix_cache


def _state_regions(core, units: list[int]) -> dict[str, list[int]]:
    cache = core.engine.cache
    if cache.conv is not None and cache.conv.numel():
        return {"conv": units, "ssm": units}
    return {}


def _refuse_several_ranks(core) -> None:
    """Peer reads move one rank's units: a worker of several ranks would ship or fill only rank 0's
    shard, so it neither exposes nor reads (the reader recomputes the prefix instead)."""
    if core.config.engine.parallel.world_size > 1:
        raise PrefixUnavailable("peer prefix reads are not built for workers of several ranks (--tp/--ep > 1)")


def expose_prefix(core, request: worker_pb2.ExposePrefixRequest) -> worker_pb2.ExposePrefixResponse:
    _refuse_several_ranks(core)
    tokens = list(request.token_ids)
    if not tokens or request.blocks <= 0:
        raise ValueError("ExposePrefix needs token ids and blocks > 0")
    exported = core.loop.call(lambda engine: _prefix_cache(engine).export_prefix(tokens, request.cache_salt, request.blocks))
    blocks = exported.num_tokens // core.config.block_size
    units = {"kv": list(exported.page_ids)}
    if exported.checkpoint_slot is not None:
        units.update(_state_regions(core, [exported.checkpoint_slot]))
    deadline_s = request.deadline_s or EXPOSE_DEADLINE_S
    transfer_id = request.transfer_id or uuid.uuid4().hex
    try:
        descriptor = core.backend.expose(transfer_id, units, deadline_s)
    except BaseException:
        core.loop.call(lambda engine: _prefix_cache(engine).release_export(exported))
        raise
    core.exposed.add(transfer_id, exported)
    _reap_later(core, transfer_id, deadline_s)
    return worker_pb2.ExposePrefixResponse(descriptor=descriptor_to_proto(descriptor), blocks=blocks)


def release_exposed(core, transfer_id: str) -> bool:
    exported = core.exposed.pop(transfer_id)
    if exported is None:
        return False
    core.loop.call(lambda engine: _prefix_cache(engine).release_export(exported))
    try:
        core.backend.forget(transfer_id)
    except Exception:  # noqa: BLE001 - the backend may have dropped it already
        pass
    return True


def _reap_later(core, transfer_id: str, deadline_s: float) -> None:
    timer = threading.Timer(deadline_s + 1.0, lambda: release_exposed(core, transfer_id))
    timer.daemon = True
    timer.start()


def fetch_prefix(core, req: worker_pb2.WorkerRequest, source: worker_pb2.FetchSource) -> tuple[int, bool]:
    """Pull `source.blocks` blocks of the prompt from the holder. Returns (fetched tokens, failed)."""
    started = time.perf_counter()
    transfer_id = f"fetch-{req.request_id}-{uuid.uuid4().hex[:6]}"
    if core.config.engine.parallel.world_size > 1:
        log.info("request %s: not fetching from %s: this worker has several ranks; recomputing", req.request_id, source.worker_id)
        return 0, True
    tls = core.config.tls if core.config.tls.ca else None
    channel = insecure_or_tls_channel(source.address, tls, core.config.cluster)
    holder = worker_pb2_grpc.WorkerControlStub(channel)
    try:
        exposed = holder.ExposePrefix(
            worker_pb2.ExposePrefixRequest(
                token_ids=req.prompt_token_ids, cache_salt=req.cache_salt, blocks=source.blocks,
                transfer_id=transfer_id, deadline_s=EXPOSE_DEADLINE_S,
            ),  # fmt: skip
            timeout=10,
        )
        tokens = list(req.prompt_token_ids)
        fetched = _read_into_cache(core, exposed, tokens, req.cache_salt)
        core.count("fetched_tokens", fetched)
        log.info("fetched %d tokens of %s from %s in %.1f ms", fetched, req.request_id, source.worker_id,
                 1e3 * (time.perf_counter() - started))  # fmt: skip
        return fetched, False
    except (grpc.RpcError, RuntimeError, ValueError, TimeoutError) as error:
        detail = error.details() if isinstance(error, grpc.RpcError) else str(error)
        log.warning("fetch of %s from %s failed (%s); recomputing", req.request_id, source.worker_id, detail)
        core.count("fetch_failures", 1)
        return 0, True
    finally:
        try:
            holder.ReleaseExposed(worker_pb2.ReleaseExposedRequest(transfer_id=transfer_id), timeout=5)
        except grpc.RpcError:
            pass
        channel.close()


def _read_into_cache(core, exposed: worker_pb2.ExposePrefixResponse, tokens: list[int], salt: str) -> int:
    descriptor = descriptor_from_proto(exposed.descriptor)
    buffer = core.loop.call(lambda engine: _prefix_cache(engine).begin_import(exposed.blocks))
    units = {"kv": buffer.page_ids}
    if buffer.checkpoint_slot is not None:
        units.update(_state_regions(core, [buffer.checkpoint_slot]))
    result = core.backend.read(descriptor, units)
    if result.status.name != "DONE":
        core.loop.call(lambda engine: _prefix_cache(engine).abort_import(buffer))
        raise RuntimeError(f"read {result.status.name}: {result.reason}")
    return core.loop.call(lambda engine: _prefix_cache(engine).commit_import(buffer, tokens, salt))
