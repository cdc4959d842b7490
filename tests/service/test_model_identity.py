"""Router and workers agree on the model by its identity (a digest of the weights), not its path:
the same weights under different folder names share the prefix index and its cache hits; other
weights (same preset, other seed) are refused with an error that names both identities."""

from __future__ import annotations

import shutil
import time

import pytest

from baton.client import BatonClient
from engine.cache.hashing import block_hashes, cache_extra
from engine.identity import CACHE_FILE
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from router.registry import ModelMismatch
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def copy_as(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(CACHE_FILE))
    return str(dst)


def test_same_weights_under_other_folder_names_share_cache_hits(tmp_path):
    router_dir = copy_as(tiny_checkpoint("qwen3_next"), tmp_path / "router-copy")
    worker_dir = copy_as(tiny_checkpoint("qwen3_next"), tmp_path / "mounted" / "weights")
    spec = ClusterSpec(
        worker_dir, prefill=0, decode=2, router_model=router_dir,
        router=RouterConfig(model="", listen="127.0.0.1:0", local_prefill_threshold=1_000_000),
    )  # fmt: skip
    with LocalCluster(spec) as cluster:
        core = cluster.router.core
        infos = [h.info for h in core.registry.workers()]
        assert {i.model_identity for i in infos} == {core.model_id}
        assert core.model_info().model_identity == core.model_id
        client = BatonClient(cluster.address)
        prompt = list(range(10, 90))
        first = client.generate(
            session_id="a", token_ids=prompt, temperature=0.0, max_tokens=4, ignore_eos=True
        )
        hashes = block_hashes(prompt, core.config.block_size, extra=cache_extra(core.model_id, ""))
        hits = _wait_hits(core, hashes)
        assert first.decode_worker in hits
        second = client.generate(
            session_id="b", token_ids=prompt + [7, 8, 9], temperature=0.0, max_tokens=4, ignore_eos=True
        )
        assert second.decode_worker == first.decode_worker and second.cached_tokens >= 64


def _wait_hits(core, hashes, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        hits = core.index.lookup(core.model_id, hashes)
        if hits:
            return hits
        time.sleep(0.05)
    return {}


def test_other_weights_are_refused_by_identity(tmp_path):
    router_dir = copy_as(tiny_checkpoint("qwen3_next", seed=0), tmp_path / "model")
    worker_dir = copy_as(tiny_checkpoint("qwen3_next", seed=1), tmp_path / "other" / "model")
    spec = ClusterSpec(worker_dir, prefill=0, decode=1, router_model=router_dir)
    with pytest.raises(ModelMismatch, match=r"serves model identity xxh3:\w+ but the router serves xxh3:\w+"):
        with LocalCluster(spec):
            pass
