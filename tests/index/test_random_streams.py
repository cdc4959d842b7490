"""Random event streams: every lookup equals the reference model's, on both indexes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefix_index import IndexEvent
from tests.index.reference import ReferenceIndex

# Three prompts sharing prefixes, so runs, branches and misses all happen.
CHAINS = [
    list(range(1, 13)),
    [1, 2, 3, *range(101, 110)],
    [(1 << 64) - 1 - i for i in range(12)],  # the top of the unsigned 64-bit range
]
WORKERS = ["w0", "w1", "w2"]
NAMESPACES = ["model-a\x1ftenant-1", "model-a\x1ftenant-2"]


@st.composite
def an_event(draw: st.DrawFn) -> IndexEvent:
    chain = draw(st.sampled_from(CHAINS))
    start = draw(st.integers(0, len(chain) - 1))
    stop = draw(st.integers(start + 1, len(chain)))
    blocks = tuple(chain[start:stop])
    checkpoints = tuple(h for h in chain[start:stop] if draw(st.booleans()))
    if draw(st.integers(0, 5)) == 0:  # a checkpoint-only or block-only change now and then
        blocks, checkpoints = draw(st.sampled_from([((), checkpoints), (blocks, ())]))
    return IndexEvent(draw(st.sampled_from(["stored", "stored", "removed"])), blocks, checkpoints)


operation = st.one_of(
    st.tuples(
        st.just("publish"),
        st.sampled_from(WORKERS),
        st.sampled_from(NAMESPACES),
        st.lists(an_event(), min_size=1, max_size=3),
    ),
    st.tuples(st.just("restart"), st.sampled_from(WORKERS)),
    st.tuples(st.just("heartbeat"), st.sampled_from(WORKERS)),
    st.tuples(st.just("clear"), st.sampled_from(WORKERS)),
    st.tuples(
        st.just("stale_publish"),
        st.sampled_from(WORKERS),
        st.sampled_from(NAMESPACES),
        st.lists(an_event(), min_size=1, max_size=2),
    ),
)


@pytest.mark.timeout(60)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(operation, min_size=1, max_size=25))
def test_lookups_match_reference_for_random_event_streams(index_kit, operations) -> None:
    index, reference = index_kit.make(), ReferenceIndex()
    epochs = dict.fromkeys(WORKERS, 1)
    for worker in WORKERS:
        index.heartbeat(worker, 1, 600)
        reference.heartbeat(worker, 1)
    for op in operations:
        worker = op[1]
        if op[0] in ("publish", "stale_publish"):
            epoch = epochs[worker] - (op[0] == "stale_publish")  # ignored, unless the worker was cleared
            accepted = reference.publish(worker, epoch, op[2], op[3])
            assert index.publish(worker, epoch, op[2], op[3]) == accepted
        elif op[0] == "restart":
            epochs[worker] += 1
            index.heartbeat(worker, epochs[worker], 600)
            reference.heartbeat(worker, epochs[worker])
        elif op[0] == "heartbeat":
            index.heartbeat(worker, epochs[worker], 600)
            reference.heartbeat(worker, epochs[worker])
        else:
            index.clear_worker(worker)
            reference.clear(worker)
    for namespace in NAMESPACES:
        for chain in CHAINS:
            for length in (1, 3, len(chain)):
                expected = reference.lookup(namespace, chain[:length])
                assert index.lookup(namespace, chain[:length]) == expected, (namespace, chain[:length])
    assert set(index.workers()) == set(reference.lease)
