"""The global prefix index (see base.py for the lifecycle of a worker in it)."""

from router.index.base import (
    IndexEvent,
    IndexUnavailable,
    PrefixHit,
    PrefixIndex,
    StaleEpoch,
    namespace_for,
)
from router.index.embedded import EmbeddedPrefixIndex
from router.index.factory import create_index

__all__ = [
    "EmbeddedPrefixIndex",
    "IndexEvent",
    "IndexUnavailable",
    "PrefixHit",
    "PrefixIndex",
    "StaleEpoch",
    "create_index",
    "namespace_for",
]
