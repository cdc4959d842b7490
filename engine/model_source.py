"""Where `--model` points: a local checkpoint folder, or a Hugging Face hub id (`Org/Name`, optionally
`Org/Name@revision`) resolved offline through the local Hugging Face cache, as vLLM does
(`snapshot_download(..., local_files_only=True)`: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
`~/.cache/huggingface/hub`; layout `models--Org--Name/snapshots/<commit>/` + `refs/<revision>`).
Nothing is downloaded: serving machines fetch weights ahead of time."""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


class ModelNotFound(FileNotFoundError):
    """`--model` is neither a checkpoint folder nor a hub id in the local Hugging Face cache."""


def hub_cache_dir() -> Path:
    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def resolve_model(model: str | Path) -> Path:
    """The checkpoint folder for `model` (a folder path, or a hub id found in the local cache)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    text = str(model)
    if not _HUB_ID.match(text) or text.startswith((".", "/", "~")):
        raise ModelNotFound(
            f"model {text!r}: folder does not exist, and it is not a Hugging Face hub id (Org/Name)"
        )
    repo_id, _, revision = text.partition("@")
    cache = hub_cache_dir()
    try:
        snapshot = snapshot_download(
            repo_id, revision=revision or None, cache_dir=str(cache), local_files_only=True
        )
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as error:
        folder = cache / f"models--{repo_id.replace('/', '--')}"
        raise ModelNotFound(
            f"model {text!r} is not a local folder and is not in the Hugging Face cache: looked in "
            f"{folder} (cache {cache}; set HF_HUB_CACHE or HF_HOME to point elsewhere). Download it "
            f"first, e.g. `hf download {repo_id}` ({type(error).__name__})"
        ) from None
    return Path(snapshot)
