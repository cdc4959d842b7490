"""Random tiny checkpoints for tests, written once per machine and reused.

`tiny_checkpoint(model_type, variant)` returns the directory of a tiny random-weight checkpoint in
the Hugging Face layout. It is written under `$BATON_TEST_CACHE` (default
`/tmp/baton-test-checkpoints`) into a temporary directory and renamed into place, so parallel test
processes never see a half-written checkpoint. The key includes a format version: bump it when
`engine/make_model.py` changes what it writes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

FORMAT_VERSION = 3  # v3: checkpoints carry a random MTP head (mtp.*)
DEFAULT_SEED = 0


def cache_root() -> Path:
    return Path(os.environ.get("BATON_TEST_CACHE", "/tmp/baton-test-checkpoints"))


def tiny_checkpoint(
    model_type: str = "qwen3_next", variant: str = "default", seed: int = DEFAULT_SEED
) -> Path:
    """Directory of the tiny `model_type` / `variant` checkpoint (fp32), creating it if needed."""
    return _cached_checkpoint("tiny", model_type, variant, seed)


def small_checkpoint(model_type: str = "qwen3_next", seed: int = DEFAULT_SEED) -> Path:
    """Directory of the `small` benchmark checkpoint (bf16, ~100M params); slow to write the first time."""
    return _cached_checkpoint("small", model_type, "default", seed)


def _cached_checkpoint(preset: str, model_type: str, variant: str, seed: int) -> Path:
    from engine.make_model import make_model

    root = cache_root()
    final = root / f"v{FORMAT_VERSION}-{preset}-{model_type}-{variant}-seed{seed}"
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    try:
        make_model(staging, preset=preset, model_type=model_type, variant=variant, seed=seed)
        try:
            os.rename(staging, final)
        except OSError:
            # Another process won the race; its checkpoint is identical (same seed).
            if not (final / "config.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final
