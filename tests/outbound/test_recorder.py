"""
Tests for L{trackermail.outbound.recorder}: results recorded in group
commits, kept and retried while the store is away.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.stores import make_memory_store
from trackermail.errors import StoreUnavailable
from trackermail.outbound.recorder import Recorder
from trackermail.store.outbox import Result, claim_due, enqueue
from trackermail.store.outbox_report import delivery_rows, message_counts

T0 = 1_000_000.0


class RecorderTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = make_memory_store(self)
        self.store.run(enqueue, b"Subject: x\n\nx\n",
                       [(f"u{i}@example.org", "s") for i in range(300)], T0)
        self.deliveries = self.successResultOf(
            self.store.run(claim_due, "sqlite", "n1", T0, 300, 30))
        self.coming = True
        self.recorded = []
        self.bounced = []
        self.down = None
        run = self.store.run

        def store_run(program, *args, **kwargs):
            if self.down is not None and program.__name__ == "record_results":
                return defer.fail(self.down)
            return run(program, *args, **kwargs)

        self.store.run = store_run

        def hook(rcpt, sender, code, text, now):
            if rcpt == "u2@example.org":
                raise ValueError("a bug in the bounce policy")
            self.bounced.append(rcpt)
            return "counted"
            yield

        self.recorder = Recorder(self.store, "n1", self.clock, hook,
                                 more_coming=lambda: self.coming,
                                 on_recorded=lambda rs, done: self.recorded.append(
                                     (len(rs), done and done.sent)),
                                 interval=0.1, size=100)

    def states(self):
        return [r[2] for r in self.successResultOf(self.store.run(delivery_rows))]

    def left(self):
        """The recipients of the deliveries still in the outbox."""
        return [r[0] for r in self.successResultOf(self.store.run(delivery_rows))]

    def sent(self):
        """Copies sent, per message."""
        return [c.sent for c in self.successResultOf(self.store.run(message_counts))]

    def test_interval(self):
        """Results are recorded together, interval seconds after the first."""
        for d in self.deliveries[:5]:
            self.recorder.add(Result(d, "sent", 250))
        self.clock.advance(0.099)
        self.assertEqual(self.recorded, [])
        self.clock.advance(0.001)
        self.assertEqual(self.recorded, [(5, 5)])
        self.assertEqual(self.recorder.commits, 1)

    def test_size(self):
        """Every size results make a commit at once."""
        for d in self.deliveries[:250]:
            self.recorder.add(Result(d, "sent", 250))
        self.assertEqual(self.recorded, [(100, 100), (100, 100)])

    def test_nothing_more_coming(self):
        """When no more results are expected, a result is recorded at once."""
        self.coming = False
        self.recorder.add(Result(self.deliveries[0], "sent", 250))
        self.assertEqual(self.recorded, [(1, 1)])

    def test_two_statements_for_sent_results(self):
        """All sent results of a commit are recorded by two statements: the deliveries deleted, their messages counting them."""
        for i in range(100):
            self.store.run(enqueue, b"Subject: y\n\ny\n", [(f"v{i}@example.org", "s")], T0)
        singles = self.successResultOf(self.store.run(claim_due, "sqlite", "n1", T0, 100, 30))
        statements = []
        from trackermail.store import sqlite

        execute = sqlite._driver._execute

        def spy(cursor, op):
            statements.append(op.sql.split()[0])
            return execute(cursor, op)

        sqlite._driver._execute = spy
        self.addCleanup(setattr, sqlite._driver, "_execute", execute)
        for d in self.deliveries[:100]:
            self.recorder.add(Result(d, "sent", 250))
        self.assertEqual(statements, ["DELETE", "UPDATE"])
        del statements[:]
        # A copy each of 100 messages: still one update for all of them.
        for d in singles:
            self.recorder.add(Result(d, "sent", 250))
        self.assertEqual(statements, ["DELETE", "UPDATE"])
        self.assertEqual(self.sent(), [100] + [1] * 100)
        self.assertEqual(len(self.left()), 200)

    def test_store_away(self):
        """While the store is away the results are kept, and recorded when it is back."""
        self.down = StoreUnavailable("PostgreSQL: terminating connection")
        self.coming = False
        self.recorder.add(Result(self.deliveries[0], "sent", 250))
        for _ in range(100):
            self.clock.advance(1)
        self.recorder.add(Result(self.deliveries[1], "sent", 250))
        self.assertEqual(self.recorded, [])
        self.down = None
        self.clock.advance(30)
        self.assertEqual(self.recorded, [(2, 2)])
        self.assertEqual(self.left()[:1], ["u2@example.org"])
        self.assertEqual(len(self.left()), 298)
        self.assertEqual(self.sent(), [2])

    def test_bug_in_the_bounce_policy(self):
        """A result the bounce policy cannot handle is recorded without it; the others are not held up."""
        self.coming = False
        self.recorder.add(Result(self.deliveries[1], "failed", 550, "5.1.1 no", bounce=True))
        self.recorder.add(Result(self.deliveries[2], "failed", 550, "5.1.1 no", bounce=True))
        for _ in range(5):
            self.clock.advance(1)
        self.assertEqual(self.states()[1:3], ["failed", "failed"])
        # (The hook also ran in the group commits that were rolled back.)
        self.assertEqual(set(self.bounced), {"u1@example.org"})
        self.assertEqual(self.recorded, [(1, 0), (1, 0)])

    def test_gives_up_when_stopping(self):
        """When stopping with the store away, the results are given up after a few tries."""
        self.down = StoreUnavailable("PostgreSQL: down")
        self.coming = False
        self.recorder.add(Result(self.deliveries[0], "sent", 250))
        flushed = self.recorder.when_flushed()
        self.recorder.stop()
        for _ in range(120):
            self.clock.advance(1)
        self.successResultOf(flushed)
        self.assertEqual(self.recorded, [(1, None)])
