"""Hub ids resolve offline through a Hugging Face cache folder the test writes (HF_HUB_CACHE layout:
`models--Org--Name/blobs/`, `snapshots/<commit>/` of symlinks, `refs/main`), and load; a missing
cache is reported with the folder that was searched."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from engine.llm import LLM
from engine.model_source import ModelNotFound, resolve_model
from engine.sampling_params import SamplingParams
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(120)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_hub_cache(cache: Path, repo_id: str, src: Path) -> Path:
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in sorted(src.iterdir()):
        if not file.is_file() or file.name.startswith("."):
            continue
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_hub_id_loads_from_the_local_cache(tmp_path, monkeypatch):
    src = tiny_checkpoint("qwen3_next")
    snapshot = write_hub_cache(tmp_path / "hub", "Qwen/Tiny-Next", src)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model("Qwen/Tiny-Next") == snapshot
    assert resolve_model(f"Qwen/Tiny-Next@{COMMIT}") == snapshot
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    by_id = LLM("Qwen/Tiny-Next").generate([[5, 6, 7, 8]], params)
    by_dir = LLM(str(src)).generate([[5, 6, 7, 8]], params)
    assert by_id[0].token_ids == by_dir[0].token_ids


def test_missing_hub_id_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(
        ModelNotFound, match=str(tmp_path / "empty" / "models--Qwen--Qwen3-Next-80B-A3B-Instruct")
    ):
        resolve_model("Qwen/Qwen3-Next-80B-A3B-Instruct")


def test_a_missing_folder_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(ModelNotFound, match="folder does not exist"):
        resolve_model(str(tmp_path / "nowhere"))
