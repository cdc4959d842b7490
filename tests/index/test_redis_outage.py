"""Redis killed mid-run: lookups fail fast with IndexUnavailable, publishing keeps going, and once
Redis is back the workers' heartbeats make the index whole again."""

from __future__ import annotations

import time

import pytest

from prefix_index import IndexEvent, IndexUnavailable, PrefixHit, namespace_for
from prefix_index.redis_index import RedisPrefixIndex
from tests.helpers.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]

NS = namespace_for("qwen3-next", "tenant-a")
PROMPT = list(range(500, 532))


def test_outage_fails_fast_then_republish_restores_everything() -> None:
    with (
        RedisServer() as server,
        RedisPrefixIndex(server.url) as index,
        RedisPrefixIndex(server.url) as router,
    ):
        index.heartbeat("a", 7, 600)
        index.heartbeat("b", 3, 600)
        index.publish("a", 7, NS, [IndexEvent("stored", tuple(PROMPT), (PROMPT[15],))])
        index.publish("b", 3, NS, [IndexEvent("stored", tuple(PROMPT[:8]), (PROMPT[7],))])
        before = router.lookup(NS, PROMPT)
        assert before == {"a": PrefixHit("a", 32, 16), "b": PrefixHit("b", 8, 8)}

        server.stop()
        started = time.monotonic()
        with pytest.raises(IndexUnavailable):
            router.lookup(NS, PROMPT)
        with pytest.raises(IndexUnavailable):
            router.workers()
        assert time.monotonic() - started < 1.0
        # Workers keep publishing while Redis is down: kept, not lost, not raised.
        assert index.publish("a", 7, NS, [IndexEvent("stored", (), (PROMPT[31],))]) is False
        assert index.publish("b", 3, NS, [IndexEvent("removed", (PROMPT[7],), (PROMPT[7],))]) is False
        with pytest.raises(IndexUnavailable):
            index.heartbeat("a", 7, 600)

        server.restart()  # empty: no persistence
        assert router.lookup(NS, PROMPT) == {}
        assert index.heartbeat("a", 7, 600) is False  # lease gone → republished from the record
        assert index.heartbeat("b", 3, 600) is False
        assert router.lookup(NS, PROMPT) == {"a": PrefixHit("a", 32, 32), "b": PrefixHit("b", 7, 0)}
        assert router.workers() == {"a": 7, "b": 3}


def test_failed_publish_is_sent_with_the_next_one() -> None:
    with RedisServer() as server, RedisPrefixIndex(server.url) as index:
        index.heartbeat("a", 1, 600)
        server.stop()
        assert index.publish("a", 1, NS, [IndexEvent("stored", tuple(PROMPT[:4]))]) is False
        server.restart()
        index.heartbeat("a", 1, 600)  # lease first, so the entries match once they are there
        assert index.publish("a", 1, NS, [IndexEvent("stored", tuple(PROMPT[4:6]))]) is True
        assert index.lookup(NS, PROMPT) == {"a": PrefixHit("a", 6, 0)}


def test_unreachable_host_raises_quickly() -> None:
    # A port nobody listens on: connection refused, answered without waiting for a timeout.
    with RedisPrefixIndex("redis://127.0.0.1:1/0") as index:
        started = time.monotonic()
        with pytest.raises(IndexUnavailable):
            index.lookup(NS, PROMPT)
        assert time.monotonic() - started < 1.0
        assert index.publish("a", 1, NS, [IndexEvent("stored", (1,))]) is False


def test_url_and_password_come_from_the_environment(monkeypatch) -> None:
    with RedisServer() as server:
        server.client().config_set("requirepass", "s3cret")
        monkeypatch.setenv("BATON_REDIS_URL", server.url)
        monkeypatch.setenv("BATON_REDIS_PASSWORD", "s3cret")
        with RedisPrefixIndex() as index:
            assert index.workers() == {}
        monkeypatch.setenv("BATON_REDIS_PASSWORD", "wrong")
        with RedisPrefixIndex() as index, pytest.raises(IndexUnavailable, match="password"):
            index.workers()
    monkeypatch.delenv("BATON_REDIS_URL")
    with pytest.raises(ValueError, match="redis://"):
        RedisPrefixIndex()
