"""The rules of the prefix index, each on the embedded and the Redis index."""

from __future__ import annotations

import pytest

from prefix_index import IndexEvent, PrefixHit, StaleEpoch, create_index, namespace_for
from prefix_index.embedded import EmbeddedPrefixIndex

pytestmark = pytest.mark.timeout(30)

NS = namespace_for("qwen3-next", "tenant-a")
PROMPT = [11, 12, 13, 14, 15, 16, 17, 18]


def stored(blocks, checkpoints=()) -> IndexEvent:
    return IndexEvent("stored", tuple(blocks), tuple(checkpoints))


def removed(blocks, checkpoints=()) -> IndexEvent:
    return IndexEvent("removed", tuple(blocks), tuple(checkpoints))


def live(index, *workers, epoch=1, ttl_s=600.0):
    for worker in workers:
        index.heartbeat(worker, epoch, ttl_s)
    return index


def test_longest_prefix_per_worker_and_stop_at_first_gap(index_kit) -> None:
    index = live(index_kit.make(), "a", "b", "c")
    index.publish("a", 1, NS, [stored(PROMPT[:6])])
    index.publish("b", 1, NS, [stored(PROMPT[:2] + PROMPT[3:])])  # a hole at block 2
    index.publish("c", 1, NS, [stored(PROMPT[1:])])  # lacks the first block
    assert index.lookup(NS, PROMPT) == {"a": PrefixHit("a", 6, 0), "b": PrefixHit("b", 2, 0)}
    assert index.lookup(NS, [99, *PROMPT]) == {}
    assert index.lookup(NS, []) == {}


def test_only_checkpoint_ended_prefixes_are_usable(index_kit) -> None:
    index = live(index_kit.make(), "a", "b")
    index.publish("a", 1, NS, [stored(PROMPT, checkpoints=[PROMPT[1], PROMPT[4]])])
    index.publish("b", 1, NS, [stored(PROMPT[:3]), stored([], checkpoints=[PROMPT[5]])])
    assert index.lookup(NS, PROMPT) == {"a": PrefixHit("a", 8, 5), "b": PrefixHit("b", 3, 0)}
    # The state checkpoint is evicted, its pages stay: the prefix falls back to the earlier one.
    index.publish("a", 1, NS, [removed([], checkpoints=[PROMPT[4]])])
    assert index.lookup(NS, PROMPT)["a"] == PrefixHit("a", 8, 2)
    # A checkpoint beyond the held run is unusable.
    index.publish("a", 1, NS, [removed([PROMPT[1]])])
    assert index.lookup(NS, PROMPT)["a"] == PrefixHit("a", 1, 0)


def test_old_epoch_entries_never_match_after_restart(index_kit) -> None:
    index = live(index_kit.make(), "a")
    index.publish("a", 1, NS, [stored(PROMPT, checkpoints=[PROMPT[-1]])])
    assert index.heartbeat("a", 2, 600) is False  # restarted with a new epoch
    assert index.lookup(NS, PROMPT) == {}
    assert index.workers() == {"a": 2}
    assert index.publish("a", 1, NS, [stored(PROMPT)]) is False  # a zombie of epoch 1 is ignored
    with pytest.raises(StaleEpoch):
        index.heartbeat("a", 1, 600)
    assert index.lookup(NS, PROMPT) == {}
    index.publish("a", 2, NS, [stored(PROMPT[:3])])
    assert index.lookup(NS, PROMPT) == {"a": PrefixHit("a", 3, 0)}


def test_publishing_a_new_epoch_before_its_lease_hides_the_worker(index_kit) -> None:
    index = live(index_kit.make(), "a")
    index.publish("a", 1, NS, [stored(PROMPT)])
    index.publish("a", 2, NS, [stored(PROMPT[:2])])  # lease still of epoch 1
    assert index.lookup(NS, PROMPT) == {}
    index.heartbeat("a", 2, 600)
    assert index.lookup(NS, PROMPT) == {"a": PrefixHit("a", 2, 0)}


def test_lease_expiry_hides_a_worker_until_it_heartbeats_again(index_kit) -> None:
    index = index_kit.make()
    ttl = index_kit.short_ttl_s
    assert index.heartbeat("a", 1, ttl) is False
    index.heartbeat("b", 1, 600)
    index.publish("a", 1, NS, [stored(PROMPT, checkpoints=[PROMPT[3]])])
    index.publish("b", 1, NS, [stored(PROMPT[:2])])
    assert index.heartbeat("a", 1, ttl) is True
    index_kit.advance(2 * ttl)
    assert index.lookup(NS, PROMPT) == {"b": PrefixHit("b", 2, 0)}
    assert index.workers() == {"b": 1}
    assert index.heartbeat("a", 1, 600) is False  # the lease had lapsed
    assert index.lookup(NS, PROMPT) == {"a": PrefixHit("a", 8, 4), "b": PrefixHit("b", 2, 0)}


def test_namespaces_are_isolated(index_kit) -> None:
    index = live(index_kit.make(), "a")
    other_tenant = namespace_for("qwen3-next", "tenant-b")
    other_model = namespace_for("qwen3.5", "tenant-a")
    index.publish("a", 1, NS, [stored(PROMPT, checkpoints=PROMPT)])
    assert index.lookup(other_tenant, PROMPT) == {}
    assert index.lookup(other_model, PROMPT) == {}
    index.publish("a", 1, other_tenant, [stored(PROMPT[:1])])
    assert index.lookup(other_tenant, PROMPT) == {"a": PrefixHit("a", 1, 0)}
    assert index.lookup(NS, PROMPT) == {"a": PrefixHit("a", 8, 8)}


def test_clear_worker_removes_everything_of_it(index_kit) -> None:
    index = live(index_kit.make(), "a", "b")
    for ns in (NS, namespace_for("m", "t")):
        index.publish("a", 1, ns, [stored(PROMPT)])
        index.publish("b", 1, ns, [stored(PROMPT[:4])])
    index.clear_worker("a")
    assert index.workers() == {"b": 1}
    assert index.lookup(NS, PROMPT) == {"b": PrefixHit("b", 4, 0)}
    index.heartbeat("a", 1, 600)  # back, but with nothing published
    assert index.lookup(NS, PROMPT) == {"b": PrefixHit("b", 4, 0)}
    assert index.lookup(namespace_for("m", "t"), PROMPT) == {"b": PrefixHit("b", 4, 0)}


def test_long_prompts_and_many_holders(index_kit) -> None:
    index = index_kit.make()
    prompt = list(range(10_000, 10_000 + 20_000))  # more hashes than one Redis script call takes
    workers = [f"w{i}" for i in range(40)]
    live(index, *workers)
    for i, worker in enumerate(workers):
        held = prompt if i == 0 else prompt[: 100 * (i + 1)]
        index.publish(worker, 1, NS, [stored(held, checkpoints=held[63::64])])
    hits = index.lookup(NS, prompt)
    assert hits["w0"] == PrefixHit("w0", 20_000, 19_968)
    assert hits["w5"] == PrefixHit("w5", 600, 576)
    assert len(hits) == 40


def test_bad_input_is_rejected_with_a_message(index_kit) -> None:
    index = index_kit.make()
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        index.lookup(NS, [1, -2])
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        index.lookup(NS, [1 << 64])
    with pytest.raises(ValueError, match="namespace"):
        index.lookup("", [1])
    with pytest.raises(ValueError, match="worker_id"):
        index.publish("", 1, NS, [])
    with pytest.raises(ValueError, match="epoch"):
        index.heartbeat("a", -1, 5)
    with pytest.raises(ValueError, match="ttl"):
        index.heartbeat("a", 1, 0)
    with pytest.raises(ValueError, match="kind"):
        IndexEvent("evicted", (1,), ())  # type: ignore[arg-type]


def test_factory_builds_each_kind(redis_url) -> None:
    assert isinstance(create_index("embedded"), EmbeddedPrefixIndex)
    with create_index(redis_url) as index:
        assert type(index).__name__ == "RedisPrefixIndex"
        assert index.workers() == {}  # the default key prefix is unused by the other tests
    with pytest.raises(ValueError, match="unknown index"):
        create_index("memcached://x")
