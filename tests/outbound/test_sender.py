"""
The outbox sender: claims, sends through a transport, records results,
retries with backoff, shares the outbox between nodes.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.outbound import MemoryOutboundTransport
from tests.support.stores import make_memory_store, make_pg_store
from trackermail.outbound.sender import OutboxSender
from trackermail.store.outbox import (
    claim_due,
    delivery_rows,
    enqueue,
    mark_sent,
    outbox_summary,
)

BODY = b"Subject: hello\r\n\r\nbody\r\n"


def states(testcase, store):
    rows = testcase.successResultOf(store.run(delivery_rows))
    return [(r[0], r[2], r[3]) for r in rows]


class SenderTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = make_memory_store(self)
        self.transport = MemoryOutboundTransport()
        self.failures = []

        def hook(rcpt, sender, code, text, now):
            self.failures.append((rcpt, code))
            return
            yield

        self.sender = OutboxSender(self.store, self.transport, self.clock, node="n1",
                                   batch_size=10, retry_initial=60, retry_max=600,
                                   give_up_days=1, on_permanent_failure=hook)

    def start(self):
        self.sender.startService()
        self.addCleanup(self.sender.stopService)

    def enqueue(self, *rcpts, prefix=b""):
        return self.successResultOf(self.store.run(enqueue, 
            BODY, [(r, f"bounces+{r.split('@')[0]}@t.example", prefix) for r in rcpts],
            self.clock.seconds()))

    def test_sends_queued_deliveries(self):
        """Queued deliveries are sent with their own envelope sender and marked sent."""
        self.enqueue("a@example.org", "b@example.org", prefix=b"X-Extra: 1\r\n")
        self.start()
        self.assertEqual([(m.mail_from, m.recipients, m.data) for m in self.transport.sent], [
            ("bounces+a@t.example", ["a@example.org"], b"X-Extra: 1\r\n" + BODY),
            ("bounces+b@t.example", ["b@example.org"], b"X-Extra: 1\r\n" + BODY),
        ])
        self.assertEqual(states(self, self.store),
                         [("a@example.org", "sent", 1), ("b@example.org", "sent", 1)])

    def test_wakes_on_new_work(self):
        """An idle sender sends new deliveries as soon as they are committed."""
        self.start()
        self.assertEqual(self.transport.sent, [])
        self.enqueue("a@example.org")
        self.assertEqual(len(self.transport.sent), 1)

    def test_temporary_failure_is_retried_with_backoff(self):
        """A 4xx is retried after 60 s, then 120 s, then delivered."""
        self.transport.script("a@example.org", (451, "4.3.0 try later"),
                              (421, "4.4.2 down"))
        self.enqueue("a@example.org")
        self.start()
        self.assertEqual(states(self, self.store), [("a@example.org", "queued", 1)])
        self.clock.advance(59)
        self.assertEqual(len(self.transport.sent), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.transport.sent), 2)
        self.clock.advance(119)
        self.assertEqual(len(self.transport.sent), 2)
        self.clock.advance(1)
        self.assertEqual(states(self, self.store), [("a@example.org", "sent", 3)])

    def test_permanent_failure_is_recorded(self):
        """A 5xx fails the delivery at once and goes to the bounce hook."""
        self.transport.script("a@example.org", (550, "5.1.1 no such user"))
        self.enqueue("a@example.org", "b@example.org")
        self.start()
        self.assertEqual(states(self, self.store),
                         [("a@example.org", "failed", 1), ("b@example.org", "sent", 1)])
        rows = self.successResultOf(self.store.run(delivery_rows))
        self.assertEqual(rows[0][4:], (550, "5.1.1 no such user"))
        self.assertEqual(self.failures, [("a@example.org", 550)])

    def test_gives_up_after_the_limit(self):
        """A delivery still failing temporarily after give_up_days is failed."""
        self.transport.script("a@example.org", *[(451, "4.3.0 later")] * 1000)
        self.enqueue("a@example.org")
        self.start()
        for _ in range(200):
            self.clock.advance(600)
        [(rcpt, state, attempts)] = states(self, self.store)
        self.assertEqual(state, "failed")
        rows = self.successResultOf(self.store.run(delivery_rows))
        self.assertTrue(rows[0][5].startswith("gave up after"))
        self.assertEqual(self.failures, [])  # a 4xx give-up is no bounce

    def test_crash_mid_batch_resends_only_unrecorded(self):
        """Deliveries claimed by a node that died are sent again after the lease."""
        self.enqueue("a@example.org", "b@example.org")
        # A node claims both, records only a's result, and dies.
        claimed = self.successResultOf(self.store.run(
            claim_due, "sqlite", "dead-node", self.clock.seconds(), 10, 600))
        self.successResultOf(self.store.run(mark_sent, [claimed[0].id],
                                            self.clock.seconds()))
        self.start()
        self.assertEqual(self.transport.sent, [])
        self.clock.advance(601)
        self.assertEqual([m.recipients for m in self.transport.sent], [["b@example.org"]])
        self.assertEqual([s[1] for s in states(self, self.store)], ["sent", "sent"])

    def test_bytes_in_flight_are_bounded(self):
        """No more than max_inflight_bytes of messages are handed to the transport at once."""
        self.transport.hold = True
        self.sender.max_inflight_bytes = len(BODY) * 2
        self.enqueue(*[f"u{i}@example.org" for i in range(5)])
        self.start()
        self.assertEqual(len(self.transport.sent), 2)
        while self.transport.release():
            pass
        self.assertEqual(len(self.transport.sent), 5)
        self.assertEqual({s[1] for s in states(self, self.store)}, {"sent"})


class TwoNodesOnPostgresTests(TestCase):
    timeout = 120

    async def test_two_senders_share_the_outbox(self):
        """Two senders on one PostgreSQL outbox deliver 2,000 copies, none twice, none lost."""
        store_a = await make_pg_store(self, size=2)
        from trackermail.store.postgres import PostgresStore

        store_b = PostgresStore(store_a.dsn, size=2)
        self.addCleanup(store_b.close)
        await store_b.start()
        deliveries = [(f"u{i}@example.org", f"bounces+{i}@t.example") for i in range(2000)]
        await store_a.run(enqueue, BODY, deliveries, 0.0)
        ta, tb = MemoryOutboundTransport(), MemoryOutboundTransport()
        a = OutboxSender(store_a, ta, node="a", batch_size=100)
        b = OutboxSender(store_b, tb, node="b", batch_size=100)
        for s in (a, b):
            s.startService()
            self.addCleanup(s.stopService)
        await a.when_idle()
        await b.when_idle()
        sent = [r for t in (ta, tb) for m in t.sent for r in m.recipients]
        self.assertEqual(len(sent), 2000)
        self.assertEqual(len(set(sent)), 2000)
        self.assertTrue(ta.sent and tb.sent, "both nodes should have worked")
        summary = await store_a.run(outbox_summary, 1e12)
        self.assertEqual((summary.sent, summary.queued, summary.sending), (2000, 0, 0))


class PurgeTests(SynchronousTestCase):
    def test_sent_deliveries_are_purged_after_a_day(self):
        """Sent deliveries and their bodies are removed a day later; failed ones stay."""
        clock = Clock()
        clock.advance(1_000_000)
        store = make_memory_store(self)
        transport = MemoryOutboundTransport()
        transport.script("bad@example.org", (550, "5.1.1 no"))
        sender = OutboxSender(store, transport, clock, node="n")
        self.successResultOf(store.run(enqueue, BODY, [("a@example.org", "s"),
                                                  ("bad@example.org", "s")], clock.seconds()))
        sender.startService()
        self.addCleanup(sender.stopService)
        self.assertEqual([s[1] for s in states(self, store)], ["sent", "failed"])
        clock.advance(86400 + 3600)
        self.assertEqual(states(self, store), [("bad@example.org", "failed", 1)])
