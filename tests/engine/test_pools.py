import pytest

from engine.cache.page_pool import OutOfPages, PagePool
from engine.cache.state_pool import OutOfSlots, StatePool

pytestmark = pytest.mark.timeout(30)


def test_page_pool_allocates_distinct_pages_until_exhausted():
    pool = PagePool(5)
    first = pool.allocate(3)
    second = pool.allocate(2)
    assert sorted(first + second) == [0, 1, 2, 3, 4]
    assert pool.num_free == 0 and pool.num_total == 5
    with pytest.raises(OutOfPages):
        pool.allocate(1)


def test_failed_allocation_takes_nothing():
    pool = PagePool(4)
    pool.allocate(2)
    with pytest.raises(OutOfPages):
        pool.allocate(3)
    assert pool.num_free == 2
    assert len(pool.allocate(2)) == 2


def test_refcounts_free_at_zero():
    pool = PagePool(3)
    (page,) = pool.allocate(1)
    pool.incref([page])
    assert pool.refcount(page) == 2
    pool.decref([page])
    assert pool.refcount(page) == 1 and pool.num_free == 2
    pool.decref([page])
    assert pool.refcount(page) == 0 and pool.num_free == 3 and pool.is_free(page)


def test_decref_of_free_page_raises_and_changes_nothing():
    pool = PagePool(3)
    a, b = pool.allocate(2)
    with pytest.raises(ValueError, match="decref"):
        pool.decref([a, 2])
    assert pool.refcount(a) == 1
    with pytest.raises(ValueError):
        pool.decref([b, b])  # two drops, one reference
    assert pool.refcount(b) == 1


def test_incref_of_free_page_and_bad_ids_raise():
    pool = PagePool(2)
    with pytest.raises(ValueError):
        pool.incref([0])
    with pytest.raises(ValueError):
        pool.refcount(7)
    with pytest.raises(ValueError):
        pool.allocate(-1)
    with pytest.raises(ValueError):
        PagePool(-1)


def test_freed_pages_are_reused():
    pool = PagePool(2)
    pages = pool.allocate(2)
    pool.decref(pages)
    assert sorted(pool.allocate(2)) == sorted(pages)


def test_state_pool_allocates_given_ids_and_exhausts():
    pool = StatePool([4, 5, 6])
    got = {pool.allocate() for _ in range(3)}
    assert got == {4, 5, 6} and pool.num_free == 0
    with pytest.raises(OutOfSlots):
        pool.allocate()


def test_state_pool_double_free_and_foreign_slot_raise():
    pool = StatePool(range(2))
    slot = pool.allocate()
    pool.free(slot)
    with pytest.raises(ValueError, match="double free"):
        pool.free(slot)
    with pytest.raises(ValueError):
        pool.free(9)
    assert pool.num_free == 2
    with pytest.raises(ValueError):
        StatePool([1, 1])


def test_state_pool_empty():
    pool = StatePool([])
    assert pool.num_free == 0
    with pytest.raises(OutOfSlots):
        pool.allocate()
