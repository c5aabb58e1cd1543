"""
Tests for L{trackermail.outbound.bodies}: bodies in memory within a byte
budget, read from the store on a miss, shared while in use.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from trackermail.errors import StoreUnavailable
from trackermail.outbound.bodies import CLOSED, NOT_READY, BodyCache


class Store:
    """Bodies by id; reads answered at once, or held with C{hold}."""

    def __init__(self, bodies: dict[int, tuple], hold: bool = False):
        self.bodies = bodies
        self.hold = hold
        self.reads: list[int] = []
        self.pending: list[tuple[int, Deferred]] = []

    def load_many(self, mids: list[int]) -> Deferred:
        self.reads.append(tuple(mids))
        if self.hold:
            d: Deferred = Deferred()
            self.pending.append((tuple(mids), d))
            return d
        return succeed({m: self.bodies[m] for m in mids if m in self.bodies})

    def load(self, mid: int) -> Deferred:
        self.reads.append(mid)
        if self.hold:
            d: Deferred = Deferred()
            self.pending.append((mid, d))
            return d
        return succeed(self.bodies.get(mid))

    def answer(self) -> None:
        pending, self.pending = self.pending, []
        for mid, d in pending:
            if isinstance(mid, tuple):
                d.callback({m: self.bodies[m] for m in mid if m in self.bodies})
            else:
                d.callback(self.bodies.get(mid))


class BodyCacheTests(SynchronousTestCase):
    def setUp(self):
        self.store = Store({1: (b"a" * 40,), 2: (b"b" * 40,), 3: (b"c" * 40,),
                            9: (b"x" * 500,)})
        self.cache = BodyCache(self.store.load, budget=100)

    def acquire(self, mid, size=40):
        return self.successResultOf(Deferred.fromCoroutine(self.cache.acquire(mid, size)))

    def test_miss_reads_the_store(self):
        """A body not in memory is read from the store."""
        self.assertEqual(self.cache.acquire_now(1), NOT_READY)
        self.assertEqual(self.acquire(1), (b"a" * 40,))
        self.assertEqual(self.store.reads, [1])

    def test_hit_does_not_read_again(self):
        """A body in memory is served from memory, in use or not."""
        self.acquire(1)
        self.cache.release(1)
        self.assertEqual(self.cache.acquire_now(1), (b"a" * 40,))
        self.assertEqual(self.acquire(1), (b"a" * 40,))
        self.assertEqual(self.store.reads, [1])

    def test_evicted_body_is_read_again(self):
        """A body pushed out of memory is read again when needed, never taken for missing."""
        for mid in (1, 2):
            self.acquire(mid)
            self.cache.release(mid)
        self.acquire(3)
        self.cache.release(3)
        self.assertEqual(self.cache.acquire_now(1), NOT_READY)
        self.assertEqual(self.acquire(1), (b"a" * 40,))
        self.assertEqual(self.store.reads, [1, 2, 3, 1])
        self.assertLessEqual(self.cache.used, 100)

    def test_waits_for_room(self):
        """A body that does not fit waits until a body in use is released."""
        self.acquire(1)
        self.acquire(2)
        waiting = Deferred.fromCoroutine(self.cache.acquire(3, 40))
        self.assertNoResult(waiting)
        self.cache.release(1)
        self.assertEqual(self.successResultOf(waiting), (b"c" * 40,))
        self.assertEqual(self.cache.used, 80)

    def test_first_come_first_served(self):
        """A big body waiting for room is not overtaken by small ones."""
        self.acquire(1)
        big = Deferred.fromCoroutine(self.cache.acquire(9, 500))
        small = Deferred.fromCoroutine(self.cache.acquire(2, 40))
        self.assertNoResult(big)
        self.assertNoResult(small)
        self.cache.release(1)
        self.assertEqual(self.successResultOf(big), (b"x" * 500,))
        self.assertNoResult(small)
        self.cache.release(9)
        self.assertEqual(self.successResultOf(small), (b"b" * 40,))

    def test_body_larger_than_the_budget_goes_alone(self):
        """A body larger than the whole budget is read once nothing else is in memory."""
        self.assertEqual(self.acquire(9, 500), (b"x" * 500,))
        self.assertEqual(self.cache.used, 500)
        waiting = Deferred.fromCoroutine(self.cache.acquire(1, 40))
        self.assertNoResult(waiting)
        self.cache.release(9)
        self.successResultOf(waiting)
        self.assertEqual(self.cache.used, 40)

    def test_concurrent_copies_share_one_read(self):
        """Copies asking for a body being read wait for that read instead of reading again."""
        self.store.hold = True
        first = Deferred.fromCoroutine(self.cache.acquire(1, 40))
        second = Deferred.fromCoroutine(self.cache.acquire(1, 40))
        self.assertEqual(self.cache.acquire_now(1), NOT_READY)
        self.store.answer()
        self.assertIs(self.successResultOf(first), self.successResultOf(second))
        self.assertEqual(self.store.reads, [1])

    def test_missing_body_is_not_cached(self):
        """A body the store does not have is reported as None, and asked for again next time."""
        self.assertIsNone(self.acquire(7))
        self.cache.release(7)
        self.assertIsNone(self.acquire(7))
        self.assertEqual(self.store.reads, [7, 7])
        self.assertEqual(self.cache.used, 0)

    def test_failed_read(self):
        """A read that fails raises for every copy waiting for it and keeps nothing in memory."""
        self.store.hold = True
        first = Deferred.fromCoroutine(self.cache.acquire(1, 40))
        second = Deferred.fromCoroutine(self.cache.acquire(1, 40))
        [(_, d)] = self.store.pending
        d.errback(StoreUnavailable("down"))
        self.failureResultOf(first, StoreUnavailable)
        self.failureResultOf(second, StoreUnavailable)
        self.assertEqual(self.cache.used, 0)

    def test_close_wakes_waiters(self):
        """Closing the cache ends every wait for room with CLOSED."""
        self.acquire(9, 500)
        waiting = Deferred.fromCoroutine(self.cache.acquire(1, 40))
        self.cache.close()
        self.assertIs(self.successResultOf(waiting), CLOSED)


class PrefetchTests(SynchronousTestCase):
    def setUp(self):
        self.store = Store({1: (b"a" * 40,), 2: (b"b" * 40,), 3: (b"c" * 40,),
                            4: (b"d" * 40,)})
        self.cache = BodyCache(self.store.load, budget=100, load_many=self.store.load_many)

    def prefetch(self, wanted):
        self.successResultOf(Deferred.fromCoroutine(self.cache.prefetch(wanted)))

    def test_reads_a_batch_at_once(self):
        """The bodies a batch needs are read in one go; acquiring them reads nothing."""
        self.prefetch([(1, 40), (2, 40), (1, 40)])
        self.assertEqual(self.store.reads, [(1, 2)])
        self.assertEqual(self.cache.acquire_now(1), (b"a" * 40,))
        self.assertEqual(self.cache.acquire_now(2), (b"b" * 40,))
        self.assertEqual(self.store.reads, [(1, 2)])
        self.assertEqual(self.cache.used, 80)

    def test_only_what_fits_and_is_not_in_memory(self):
        """
        Bodies already in memory are not read again, and the read stops at
        the room left: nothing in use is evicted for a guess.
        """
        self.successResultOf(Deferred.fromCoroutine(self.cache.acquire(1, 40)))
        self.prefetch([(1, 40), (2, 40), (3, 40), (4, 40)])
        self.assertEqual(self.store.reads, [1])
        self.prefetch([(1, 40), (2, 30), (3, 30), (4, 40)])
        self.assertEqual(self.store.reads, [1, (2, 3)])
        self.assertLessEqual(self.cache.used, 100)
        self.assertEqual(self.cache.acquire_now(4), NOT_READY)

    def test_one_body_is_left_to_acquire(self):
        """A single body is no batch: acquire reads it as before."""
        self.prefetch([(1, 40)])
        self.assertEqual(self.store.reads, [])

    def test_missing_and_failed_reads_are_left_to_acquire(self):
        """
        A body the store does not have is not remembered as missing, and a
        failed read caches nothing: acquire asks the store itself.
        """
        self.prefetch([(1, 40), (7, 40)])
        self.assertEqual(self.cache.acquire_now(7), NOT_READY)
        self.assertEqual(self.acquire(7), None)

        cache = BodyCache(self.store.load, budget=100,
                          load_many=lambda mids: fail(StoreUnavailable("down")))
        self.successResultOf(Deferred.fromCoroutine(cache.prefetch([(2, 40), (3, 40)])))
        self.assertEqual(cache.acquire_now(2), NOT_READY)
        self.assertEqual(cache.used, 0)

    def test_read_in_flight_is_not_overwritten(self):
        """
        A body an acquire began reading while the batch read was on its way
        keeps that acquire's entry; the rest of the batch is filled in.
        """
        self.store.hold = True
        prefetching = Deferred.fromCoroutine(self.cache.prefetch([(2, 40), (3, 40)]))
        acquiring = Deferred.fromCoroutine(self.cache.acquire(2, 40))
        self.store.answer()
        self.successResultOf(prefetching)
        self.assertEqual(self.successResultOf(acquiring), (b"b" * 40,))
        self.assertEqual(self.store.reads, [(2, 3), 2])
        self.assertEqual(self.cache.used, 80)
        self.assertEqual(self.cache.acquire_now(3), (b"c" * 40,))

    def acquire(self, mid, size=40):
        return self.successResultOf(Deferred.fromCoroutine(self.cache.acquire(mid, size)))
