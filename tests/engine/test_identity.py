"""Model identity: a digest of config + safetensors headers + tensor contents, never a path. The
loader's digest (computed while loading) equals the hash-only one the router computes; it is cached
beside the model (or in the user cache dir for a read-only folder) and recomputed when files change."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from engine.identity import CACHE_FILE, model_identity
from engine.loader import load_checkpoint
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(120)


def fresh_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(CACHE_FILE))
    return dst


def test_same_weights_same_identity_whatever_the_folder(tmp_path):
    a = fresh_copy(tiny_checkpoint("qwen3_next"), tmp_path / "a")
    b = fresh_copy(tiny_checkpoint("qwen3_next"), tmp_path / "somewhere" / "else")
    hashed = model_identity(a)  # hash-only pass (what the router does)
    assert (a / CACHE_FILE).is_file()
    (a / CACHE_FILE).unlink()
    loaded = load_checkpoint(a).identity  # computed while loading
    assert hashed == loaded == load_checkpoint(b).identity
    assert hashed.startswith("xxh3:") and str(a) not in hashed


def test_other_seed_or_config_other_identity(tmp_path):
    seed0 = model_identity(fresh_copy(tiny_checkpoint("qwen3_next"), tmp_path / "s0"))
    seed1 = model_identity(fresh_copy(tiny_checkpoint("qwen3_next", seed=1), tmp_path / "s1"))
    assert seed0 != seed1
    changed = fresh_copy(tiny_checkpoint("qwen3_next"), tmp_path / "c")
    config = json.loads((changed / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (changed / "config.json").write_text(json.dumps(config))
    assert model_identity(changed) != seed0


def test_cache_is_keyed_by_sizes_and_mtimes(tmp_path):
    path = fresh_copy(tiny_checkpoint("qwen3_next"), tmp_path / "m")
    first = model_identity(path)
    # A cached value is only trusted for the same files: plant a bogus one, then touch a shard.
    record = json.loads((path / CACHE_FILE).read_text())
    (path / CACHE_FILE).write_text(json.dumps({**record, "identity": "xxh3:bogus"}))
    assert model_identity(path) == "xxh3:bogus"
    shard = sorted(path.glob("*.safetensors"))[0]
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    assert model_identity(path) == first


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_caches_in_the_user_cache_dir(tmp_path, monkeypatch):
    _read_only_case(tmp_path, monkeypatch)


def test_unwritable_folder_caches_in_the_user_cache_dir(tmp_path, monkeypatch):
    # As root, chmod does not stop writes; a folder path under a regular file cannot be written by anyone.
    path = fresh_copy(tiny_checkpoint("qwen3_next"), tmp_path / "m")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr("engine.identity.CACHE_FILE", "config.json/identity.json")
    identity = model_identity(path)
    cached = list((tmp_path / "xdg" / "baton" / "identity").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["identity"] == identity


def _read_only_case(tmp_path, monkeypatch):
    path = fresh_copy(tiny_checkpoint("qwen3_next"), tmp_path / "m")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        identity = model_identity(path)
        assert not (path / CACHE_FILE).exists()
        assert list((tmp_path / "xdg" / "baton" / "identity").glob("*.json"))
        assert model_identity(path) == identity
    finally:
        path.chmod(stat.S_IRWXU)
