"""One suite, two indexes: every test taking `index_kit` runs on the embedded and the Redis index."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from prefix_index import EmbeddedPrefixIndex, PrefixIndex
from prefix_index.redis_index import RedisPrefixIndex
from tests.helpers.redis_server import RedisServer

_prefixes = itertools.count()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class IndexKit:
    """Makes fresh, isolated indexes of one kind and lets leases run out."""

    kind: str
    make: Callable[[], PrefixIndex]
    advance: Callable[[float], None]  # let this much lease time pass
    short_ttl_s: float  # a TTL that `advance(2 * short_ttl_s)` surely outlives


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


@pytest.fixture(params=["embedded", "redis"])
def index_kit(request: pytest.FixtureRequest) -> Iterator[IndexKit]:
    made: list[PrefixIndex] = []
    if request.param == "embedded":
        clock = FakeClock()

        def make() -> PrefixIndex:
            made.append(EmbeddedPrefixIndex(clock=clock))
            return made[-1]

        def advance(seconds: float) -> None:
            clock.now += seconds

        yield IndexKit("embedded", make, advance, short_ttl_s=10.0)
    else:
        url = request.getfixturevalue("redis_url")

        def make() -> PrefixIndex:
            # A fresh key prefix isolates each index as well as a flushed database would.
            made.append(RedisPrefixIndex(url, key_prefix=f"t{next(_prefixes)}"))
            return made[-1]

        yield IndexKit("redis", make, time.sleep, short_ttl_s=0.15)
    for index in made:
        index.close()
