"""A model's identity: a digest of what it computes, not of where it lies.

identity = xxh3-128 over `config.json`'s bytes, then for each safetensors file (sorted by name) its
header bytes and every tensor's bytes in file order. Two folders with the same weights have the
same identity; a changed seed, dtype or config does not. It namespaces the prefix-cache block
hashes and the index, so router and workers must agree on it (they check).

The loader computes it while the bytes pass anyway; `model_identity()` computes it without loading
(the router), reading one tensor at a time. Either way the result is cached in
`.baton-identity.json` beside the model, keyed by the files' sizes and mtimes; if the folder is not
writable, under `$XDG_CACHE_HOME/baton/identity/` (default `~/.cache`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import xxhash

from engine.safetensors_stream import read_header, stream_file

log = logging.getLogger(__name__)

VERSION = 1
CACHE_FILE = ".baton-identity.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PREFIX = "xxh3:"


class CheckpointFilesError(ValueError):
    """The folder holds no safetensors checkpoint, or its index names a missing file."""


def checkpoint_files(model_dir: Path) -> list[str]:
    """The safetensors files of the checkpoint, sorted (from the index, or the single file)."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    else:
        raise CheckpointFilesError(f"{model_dir}: no {INDEX_FILE} or {SINGLE_FILE}")
    for name in files:
        if not (model_dir / name).is_file():
            raise CheckpointFilesError(f"{model_dir}: shard {name} listed in the index is missing")
    return files


def new_hasher(config_bytes: bytes):
    hasher = xxhash.xxh3_128()
    hasher.update(config_bytes)
    return hasher


def finish(hasher) -> str:
    return PREFIX + hasher.hexdigest()


def _fingerprint(model_dir: Path, files: list[str]) -> dict[str, list[int]]:
    out = {}
    for name in ["config.json", *files]:
        st = (model_dir / name).stat()
        out[name] = [st.st_size, st.st_mtime_ns]
    return out


def _user_cache_file(model_dir: Path) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "baton" / "identity"
    key = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:32]
    return root / f"{key}.json"


def cached_identity(model_dir: Path, files: list[str]) -> str | None:
    """The cached identity if the files are unchanged since it was computed, else None."""
    fingerprint = _fingerprint(model_dir, files)
    for path in (model_dir / CACHE_FILE, _user_cache_file(model_dir)):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("version") == VERSION and record.get("files") == fingerprint:
            return record.get("identity")
    return None


def store_identity(model_dir: Path, files: list[str], identity: str) -> None:
    record = json.dumps({"version": VERSION, "identity": identity, "files": _fingerprint(model_dir, files)})
    for path in (model_dir / CACHE_FILE, _user_cache_file(model_dir)):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".identity-")
            with os.fdopen(fd, "w") as f:
                f.write(record)
            os.replace(tmp, path)
            return
        except OSError as error:
            log.debug("cannot cache the model identity at %s: %s", path, error)
    log.warning("could not cache the identity of %s anywhere; it will be recomputed", model_dir)


def model_identity(model_dir: str | Path) -> str:
    """The identity of the checkpoint in `model_dir`, from the cache or by hashing its files (no
    weights are placed anywhere; one tensor is in memory at a time)."""
    model_dir = Path(model_dir)
    files = checkpoint_files(model_dir)
    identity = cached_identity(model_dir, files)
    if identity is not None:
        return identity
    hasher = new_hasher((model_dir / "config.json").read_bytes())
    for name in files:
        for _entry, _tensor in stream_file(read_header(model_dir / name), hasher):
            pass
    identity = finish(hasher)
    store_identity(model_dir, files, identity)
    return identity
