"""Redis holding what it should not (a key of the wrong type, 20,000 fake live workers, an absurd
epoch): every failure reaches the caller as IndexUnavailable (never a raw Redis error), lookups
read only the candidates they are given, and a worker's heartbeat repairs what it relies on."""

from __future__ import annotations

import time

import pytest

from prefix_index import IndexEvent, IndexUnavailable, PrefixHit, StaleEpoch, namespace_for
from prefix_index.redis_index import RedisPrefixIndex

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

NS = namespace_for("qwen3-next", "tenant-a")
PROMPT = list(range(1000, 1032))
EPOCH = 1_700_000_000_000
SANE = EPOCH + 86_400_000


@pytest.fixture
def index(redis_url, request):
    prefix = f"faults{abs(hash(request.node.name))}"
    with RedisPrefixIndex(redis_url, key_prefix=prefix) as index:
        index.prefix = prefix
        index.raw = index._client
        yield index


def _publish_prompt(index, worker="a", epoch=EPOCH):
    index.heartbeat(worker, epoch, 600, max_epoch=SANE)
    assert index.publish(worker, epoch, NS, [IndexEvent("stored", tuple(PROMPT), (PROMPT[15],))])


@pytest.mark.parametrize("key", ["epoch", "ns"])
def test_a_key_of_the_wrong_type_is_unavailable_then_repaired_by_the_worker(index, key):
    _publish_prompt(index)
    name = f"{index.prefix}:epoch" if key == "epoch" else f"{index.prefix}:ns:{NS}"
    index.raw.delete(name)
    index.raw.set(name, "not a hash or a set")
    with pytest.raises(IndexUnavailable, match="WRONGTYPE"):
        index.lookup(NS, PROMPT)
    index.heartbeat("a", EPOCH, 600, max_epoch=SANE)  # repairs the epoch registry
    index.publish("a", EPOCH, NS, [IndexEvent("stored", (), (PROMPT[31],))])  # and its namespace set
    index.heartbeat("a", EPOCH, 600, max_epoch=SANE)
    assert index.lookup(NS, PROMPT) == {"a": PrefixHit("a", 32, 32)}


def test_twenty_thousand_fake_live_workers_cost_a_candidate_lookup_nothing(index):
    _publish_prompt(index)
    fakes = [f"fake-{i}" for i in range(20_000)]
    pipe = index.raw.pipeline(transaction=False)
    pipe.sadd(f"{index.prefix}:ns:{NS}", *fakes)
    pipe.hset(f"{index.prefix}:epoch", mapping=dict.fromkeys(fakes, "1"))
    for fake in fakes:
        pipe.set(f"{index.prefix}:lease:{fake}", "1", px=600_000)
    pipe.execute()
    started = time.perf_counter()
    assert index.lookup(NS, PROMPT, ["a", "b"]) == {"a": PrefixHit("a", 32, 16)}
    candidate_s = time.perf_counter() - started
    # Without candidates the lookup is bounded too (at most MAX_LOOKUP_WORKERS considered), not an error.
    assert isinstance(index.lookup(NS, PROMPT), dict)
    assert candidate_s < 1.0, f"a two-candidate lookup took {candidate_s:.2f} s"


def test_an_absurd_epoch_is_reset_and_the_worker_is_back(index):
    _publish_prompt(index)
    index.raw.hset(f"{index.prefix}:epoch", "a", str(10**30))
    assert index.lookup(NS, PROMPT) == {}  # the lease no longer matches the epoch
    assert index.publish("a", EPOCH, NS, [IndexEvent("stored", (), (PROMPT[31],))]) is False  # kept
    with pytest.raises(StaleEpoch):  # without a bound, 10**30 looks like a newer process
        index.heartbeat("a", EPOCH, 600)
    assert index.heartbeat("a", EPOCH, 600, max_epoch=SANE) is False  # reset, lease re-made
    assert index.raw.hget(f"{index.prefix}:epoch", "a") == str(EPOCH).encode()
    assert index.lookup(NS, PROMPT) == {"a": PrefixHit("a", 32, 32)}, "the whole record is back"


def test_a_garbage_epoch_is_reset_even_without_a_bound(index):
    _publish_prompt(index)
    index.raw.hset(f"{index.prefix}:epoch", "a", "9" * 40 + "x")
    index.heartbeat("a", EPOCH, 600)
    assert index.lookup(NS, PROMPT) == {"a": PrefixHit("a", 32, 16)}


def test_a_genuinely_newer_epoch_still_wins(index):
    _publish_prompt(index)
    index.heartbeat("a", EPOCH + 5, 600, max_epoch=SANE)  # the worker restarted
    with pytest.raises(StaleEpoch):
        index.heartbeat("a", EPOCH, 600, max_epoch=SANE)  # the zombie stays out
