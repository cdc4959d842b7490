"""`create_index(spec)`: "embedded" (default) | "redis://..." | "rediss://..." | "redis" (BATON_REDIS_URL)."""

from __future__ import annotations

import os

from prefix_index.base import PrefixIndex
from prefix_index.embedded import EmbeddedPrefixIndex


def create_index(spec: str = "embedded", **redis_options: object) -> PrefixIndex:
    """`redis_options` go to `RedisPrefixIndex` (e.g. `key_prefix`); the embedded index needs none."""
    if spec == "embedded":
        return EmbeddedPrefixIndex()
    if spec == "redis" or spec.startswith(("redis://", "rediss://", "unix://")):
        from prefix_index.redis_index import RedisPrefixIndex  # optional: redis, only for --index redis

        url = os.environ.get("BATON_REDIS_URL") if spec == "redis" else spec
        return RedisPrefixIndex(url, **redis_options)  # type: ignore[arg-type]
    raise ValueError(f"unknown index {spec!r}: expected 'embedded', 'redis://...' or 'rediss://...'")
