"""Where trained checkpoints are cached (the user's cache folder), and building one exactly once:
a checkpoint is built in a staging folder beside its final place and renamed into it, so a crash
leaves no half-written checkpoint and two processes racing to build it both end with one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "baton" / "trained"


def build_once(final: Path, build: Callable[[Path], object]) -> bool:
    """Run `build(staging_dir)` and move the result to `final`, unless `final` already holds a
    checkpoint. Returns True when it built, False when `final` was already there."""
    if (final / "config.json").is_file():
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        build(staging)
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / "config.json").is_file():  # another process won the race
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return True
