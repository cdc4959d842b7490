"""Fixtures shared by the engine tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.training.shipped import shipped_checkpoint


@pytest.fixture
def shipped_copy(tmp_path: Path) -> Path:
    """A private copy of the shipped trained checkpoint, free to rewrite (skips without one)."""
    source = shipped_checkpoint()
    if source is None:
        pytest.skip("no shipped trained checkpoint")
    shutil.copytree(source, tmp_path / "model", ignore=shutil.ignore_patterns(".baton-*"))
    return tmp_path / "model"
