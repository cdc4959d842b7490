"""The Redis ACL user that deploy/README.md documents is enough for the whole index, and confines it
to its key prefix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prefix_index import IndexEvent, IndexUnavailable, PrefixHit, namespace_for
from prefix_index.redis_index import RedisPrefixIndex

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]
README = Path(__file__).resolve().parents[2] / "deploy" / "README.md"
NS = namespace_for("model", "tenant")


def _documented_acl() -> list[str]:
    [line] = re.findall(r"^ACL SETUSER baton .*$", README.read_text(), re.MULTILINE)
    return line.replace("LONG-RANDOM-PASSWORD", "acl-test-pw").split()


def test_the_documented_acl_user_runs_the_index_within_its_prefix(redis_url):
    import redis

    admin = redis.Redis.from_url(redis_url)
    admin.execute_command(*_documented_acl())
    host_port = redis_url.split("//", 1)[1]
    url = f"redis://baton:acl-test-pw@{host_port}"
    with RedisPrefixIndex(url, key_prefix="baton") as index:
        index.heartbeat("w", 5, 60, max_epoch=10**13)
        assert index.publish("w", 5, NS, [IndexEvent("stored", (1, 2, 3), (3,))])
        assert index.lookup(NS, [1, 2, 3], ["w"]) == {"w": PrefixHit("w", 3, 3)}
        assert index.workers() == {"w": 5}
        index.clear_worker("w")
        assert index.lookup(NS, [1, 2, 3]) == {}
    with RedisPrefixIndex(url, key_prefix="elsewhere") as index, pytest.raises(IndexUnavailable):
        index.heartbeat("w", 5, 60)
    admin.execute_command("ACL", "DELUSER", "baton")
    admin.close()
