"""The global prefix index (see base.py for the lifecycle of a worker in it)."""

from prefix_index.base import (
    IndexEvent,
    IndexUnavailable,
    PrefixHit,
    PrefixIndex,
    StaleEpoch,
    namespace_for,
)
from prefix_index.embedded import EmbeddedPrefixIndex
from prefix_index.factory import create_index

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
