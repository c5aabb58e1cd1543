"""
The outbox sender: claims, sends through a transport, records results in
group commits, retries with backoff, reads bodies from the store within a
memory budget, leases and takes over claims, shares the outbox between
nodes.
"""

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.outbound import MemoryOutboundTransport
from tests.support.stores import make_memory_store, make_pg_store
from trackermail.outbound.interface import DATA, Reply
from trackermail.outbound.sender import OutboxSender
from trackermail.store.outbox import claim_due, enqueue, read_body
from trackermail.store.outbox_report import (
    delivery_rows,
    message_counts,
    outbox_summary,
)
from trackermail.store.sql import Exec, Rows, Value

BODY = b"Subject: hello\r\n\r\nbody\r\n"
T0 = 1_000_000.0


def states(testcase, store):
    """(recipient, state, attempts) of the deliveries left: a sent copy's is gone."""
    rows = testcase.successResultOf(store.run(delivery_rows))
    return [(r[0], r[2], r[3]) for r in rows]


def sent_counts(testcase, store):
    """How many copies of each outbox message were sent, in order of the messages."""
    return [c.sent for c in testcase.successResultOf(store.run(message_counts))]


def claims(testcase, store):
    """(recipient, claimed_by, claimed_until) of deliveries being sent."""
    return testcase.successResultOf(store.run(lambda: (yield Rows(
        "SELECT recipient, claimed_by, claimed_until FROM outbox_deliveries"
        " WHERE state = 'sending' ORDER BY id"))))


class SenderMixin:
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = make_memory_store(self)
        self.transport = MemoryOutboundTransport()
        self.failures = []

        def hook(rcpt, sender, code, text, now):
            self.failures.append((rcpt, code))
            return "counted"
            yield

        self.hook = hook
        self.sender = self.make_sender()

    def make_sender(self, **kw):
        kw.setdefault("node", "n1")
        kw.setdefault("batch_size", 10)
        kw.setdefault("retry_initial", 60)
        kw.setdefault("retry_max", 600)
        kw.setdefault("give_up_days", 1)
        kw.setdefault("on_permanent_failure", self.hook)
        return OutboxSender(self.store, kw.pop("transport", self.transport), self.clock, **kw)

    def start(self, sender=None):
        sender = sender or self.sender
        sender.startService()
        self.addCleanup(sender.stopService)
        return sender

    def enqueue(self, *rcpts, prefix=b"", body=BODY):
        return self.successResultOf(self.store.run(
            enqueue, body, [(r, f"bounces+{r.split('@')[0]}@t.example", prefix) for r in rcpts],
            self.clock.seconds()))


class SenderTests(SenderMixin, SynchronousTestCase):
    def test_sends_queued_deliveries(self):
        """Queued deliveries are sent with their own envelope sender, then forgotten: their message counts them."""
        self.enqueue("a@example.org", "b@example.org", prefix=b"X-Extra: 1\r\n")
        self.start()
        self.assertEqual([(m.mail_from, m.recipients, m.data) for m in self.transport.sent], [
            ("bounces+a@t.example", ["a@example.org"], b"X-Extra: 1\r\n" + BODY),
            ("bounces+b@t.example", ["b@example.org"], b"X-Extra: 1\r\n" + BODY),
        ])
        self.assertEqual(states(self, self.store), [])
        self.assertEqual(sent_counts(self, self.store), [2])

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
        self.assertEqual(sent_counts(self, self.store), [0])
        self.clock.advance(1)
        self.assertEqual(len(self.transport.sent), 3)
        self.assertEqual(self.transport.delivered, [("bounces+a@t.example", "a@example.org")])
        self.assertEqual(states(self, self.store), [])
        self.assertEqual(sent_counts(self, self.store), [1])

    def test_permanent_rcpt_failure_counts_after_a_short_hold(self):
        """A 5xx at RCPT is held for 10 s, then fails the delivery and goes to the bounce hook."""
        self.transport.script("a@example.org", (550, "5.1.1 no such user"))
        self.enqueue("b@example.org", "a@example.org")
        self.start()
        self.assertEqual(states(self, self.store), [("a@example.org", "sending", 1)])
        self.assertEqual(sent_counts(self, self.store), [1])
        self.assertEqual(self.failures, [])
        self.clock.advance(10)
        self.assertEqual(states(self, self.store), [("a@example.org", "failed", 1)])
        rows = self.successResultOf(self.store.run(delivery_rows))
        self.assertEqual(rows[0][4:], (550, "5.1.1 no such user"))
        self.assertEqual(self.failures, [("a@example.org", 550)])

    def test_held_refusal_is_released_by_a_later_success(self):
        """A later successful delivery shows the smarthost works: the held 5xx counts at once."""
        self.transport.script("a@example.org", (550, "5.1.1 no such user"))
        self.enqueue("a@example.org", "b@example.org")
        self.start()
        self.assertEqual(states(self, self.store), [("a@example.org", "failed", 1)])
        self.assertEqual(self.transport.delivered, [("bounces+b@t.example", "b@example.org")])
        self.assertEqual(sent_counts(self, self.store), [1])
        self.assertEqual(self.failures, [("a@example.org", 550)])

    def test_gives_up_after_the_limit(self):
        """A delivery still failing temporarily after give_up_days is failed, without a bounce."""
        self.transport.script("a@example.org", *[(451, "4.3.0 later")] * 1000)
        self.enqueue("a@example.org")
        self.start()
        for _ in range(200):
            self.clock.advance(600)
        [(rcpt, state, attempts)] = states(self, self.store)
        self.assertEqual(state, "failed")
        rows = self.successResultOf(self.store.run(delivery_rows))
        self.assertTrue(rows[0][5].startswith("gave up after"))
        self.assertEqual(self.failures, [])

    def test_content_refusal_fails_without_bounce(self):
        """A refusal at the end of DATA fails the copy but is not counted against the address."""
        self.transport.script("a@example.org", Reply(554, "5.7.1 content rejected", DATA))
        self.enqueue("a@example.org")
        self.start()
        self.assertEqual(states(self, self.store), [("a@example.org", "failed", 1)])
        self.assertEqual(self.failures, [])

    def test_transport_that_breaks_its_contract(self):
        """A transport whose send fails is a temporary failure of that copy, logged."""
        from twisted.internet.defer import fail

        self.transport.send = lambda *a: fail(RuntimeError("boom"))
        self.enqueue("a@example.org")
        with capturedLogs() as events:
            self.start()
        rows = self.successResultOf(self.store.run(delivery_rows))
        self.assertEqual(rows[0][2:5], ("queued", 1, 451))
        self.assertIn("boom", rows[0][5])
        [event] = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual((event["rcpt"], event["error"]), ("a@example.org", "boom"))

    def test_stop_before_the_store_is_ready(self):
        """A sender stopped while its store never became ready stops at once."""
        from twisted.internet.defer import Deferred

        sender = self.make_sender(ready=Deferred)
        sender.startService()
        self.successResultOf(sender.stopService())
        self.assertEqual(self.transport.sent, [])


class GroupCommitTests(SenderMixin, SynchronousTestCase):
    def setUp(self):
        super().setUp()
        self.transport.hold = True
        self.commits = []
        run = self.store.run

        def counting(program, *args, **kwargs):
            if program.__name__ == "record_results":
                self.commits.append(len(args[2]))
            return run(program, *args, **kwargs)

        self.store.run = counting

    def test_results_wait_at_most_100_ms(self):
        """While other copies are in flight, results are recorded together 100 ms after the first."""
        self.enqueue(*[f"u{i}@example.org" for i in range(10)])
        self.start()
        self.assertEqual(len(self.transport._pending), 10)
        for d, results in self.transport._pending[:4]:
            d.callback(results)
        self.assertEqual(self.commits, [])
        self.clock.advance(0.1)
        self.assertEqual(self.commits, [4])
        self.assertEqual(sent_counts(self, self.store), [4])
        self.assertEqual([s for _, s, _ in states(self, self.store)], ["sending"] * 6)

    def test_last_result_is_recorded_at_once(self):
        """When nothing else is in flight, the results are recorded without waiting."""
        self.enqueue(*[f"u{i}@example.org" for i in range(10)])
        self.start()
        self.transport.release()
        self.assertEqual(self.commits, [10])
        self.assertEqual(states(self, self.store), [])
        self.assertEqual(sent_counts(self, self.store), [10])

    def test_500_results_make_a_commit(self):
        """Every 500 results are recorded at once, without waiting for the timer."""
        self.sender.batch_size = 2000
        self.enqueue(*[f"u{i}@example.org" for i in range(1200)])
        self.start()
        pending = list(self.transport._pending)
        for d, results in pending[:1100]:
            d.callback(results)
        self.assertEqual(self.commits, [500, 500])
        self.clock.advance(0.1)
        self.assertEqual(self.commits, [500, 500, 100])

    def test_results_survive_a_store_outage(self):
        """Results that cannot be recorded are kept and recorded once the store answers again."""
        from twisted.internet import defer

        from trackermail.errors import StoreUnavailable

        self.enqueue("a@example.org", "b@example.org")
        self.start()
        run = self.store.run
        down = {"on": True}

        def flaky(program, *args, **kwargs):
            if down["on"] and program.__name__ == "record_results":
                return defer.fail(StoreUnavailable("PostgreSQL: server closed the connection"))
            return run(program, *args, **kwargs)

        self.store.run = flaky
        self.transport.release()
        for _ in range(50):
            self.clock.advance(1)
        self.assertEqual([s for _, s, _ in states(self, self.store)], ["sending"] * 2)
        self.assertEqual(sent_counts(self, self.store), [0])
        down["on"] = False
        self.clock.advance(30)
        self.assertEqual(states(self, self.store), [])
        self.assertEqual(sent_counts(self, self.store), [2])
        self.assertEqual([m.recipients for m in self.transport.sent],
                         [["a@example.org"], ["b@example.org"]])

    def test_stop_hands_nothing_more_over(self):
        """Stopping sends nothing new: deliveries waiting for memory go back, their attempt uncounted."""
        self.sender.max_inflight_bytes = len(BODY) + 10
        for n in range(3):
            self.enqueue(f"u{n}@example.org", body=BODY.replace(b"hello", b"hello %d" % n))
        self.start()
        self.assertEqual(len(self.transport._pending), 1)
        d = self.sender.stopService()
        self.transport.release()
        self.successResultOf(d)
        self.assertEqual(len(self.transport.sent), 1)
        self.assertEqual(states(self, self.store), [
            ("u1@example.org", "queued", 0), ("u2@example.org", "queued", 0)])
        self.assertEqual(sent_counts(self, self.store), [1, 0, 0])

    def test_transport_answering_nonsense(self):
        """A transport answering something else than replies is a temporary failure of the copy."""
        from twisted.internet.defer import succeed

        self.transport.send = lambda *a: succeed(None)
        self.enqueue("a@example.org")
        self.start()
        rows = self.successResultOf(self.store.run(delivery_rows))
        self.assertEqual(rows[0][2:5], ("queued", 1, 451))

    def test_stop_records_what_is_in_flight(self):
        """Stopping waits for the copies in flight and records their results."""
        self.enqueue("a@example.org", "b@example.org")
        self.start()
        d = self.sender.stopService()
        self.assertNoResult(d)
        self.transport.release()
        self.successResultOf(d)
        self.assertEqual(states(self, self.store), [])
        self.assertEqual(sent_counts(self, self.store), [2])


class BodyTests(SenderMixin, SynchronousTestCase):
    def message(self, n: int, size: int) -> bytes:
        head = b"Subject: message %d\r\n\r\n" % n
        line = b"%d: Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n" % n
        return head + line * ((size - len(head)) // len(line))

    def test_bodies_evicted_from_memory_are_read_again(self):
        """Four big messages to three subscribers each: every copy goes with its whole body."""
        self.transport.hold = True
        size = 20000
        self.sender.max_inflight_bytes = 2 * size + 100
        bodies = [self.message(n, size) for n in range(4)]
        for body in bodies:
            self.enqueue("a@x.example", "b@y.example", "c@z.example", body=body)
        self.start()
        while self.transport.release():
            pass
        got = sorted((m.recipients[0], m.data) for m in self.transport.sent)
        want = sorted((r, b) for b in bodies for r in ("a@x.example", "b@y.example",
                                                        "c@z.example"))
        self.assertEqual(got, want)
        self.assertEqual(states(self, self.store), [])
        self.assertEqual(sent_counts(self, self.store), [3, 3, 3, 3])
        self.assertEqual(self.failures, [])

    def test_body_budget_bounds_what_is_in_flight(self):
        """Bodies in memory stay within the budget: copies of other messages wait."""
        self.transport.hold = True
        self.sender.max_inflight_bytes = 2 * (len(BODY) + 2)
        for n in range(5):
            self.enqueue(f"u{n}@example.org", body=BODY.replace(b"hello", b"hello %d" % n))
        self.start()
        self.assertEqual(len(self.transport.sent), 2)
        while self.transport.release():
            pass
        self.assertEqual(len(self.transport.sent), 5)
        self.assertEqual(states(self, self.store), [])
        self.assertEqual(sent_counts(self, self.store), [1] * 5)

    def test_fan_out_shares_one_body(self):
        """The copies of a fan-out share the body: one read, all in flight at once."""
        self.transport.hold = True
        self.sender.max_inflight_bytes = len(BODY) + 1
        self.enqueue(*[f"u{n}@example.org" for n in range(8)])
        self.start()
        self.assertEqual(len(self.transport.sent), 8)
        self.assertEqual(self.sender.bodies.reads, 1)
        parts = {id(p) for m in self.transport.sent for p in m.parts}
        self.assertEqual(len(parts), 1, "one body object for every copy")

    def test_body_larger_than_the_budget_goes_alone(self):
        """A message larger than the whole budget is still sent, alone."""
        self.transport.hold = True
        self.sender.max_inflight_bytes = 1000
        big = self.message(0, 5000)
        self.enqueue("small@example.org")
        self.enqueue("big@example.org", body=big)
        self.enqueue("small2@example.org", body=BODY.replace(b"hello", b"again"))
        self.start()
        self.assertEqual([m.recipients for m in self.transport.sent], [["small@example.org"]])
        self.transport.release()
        self.assertEqual([m.recipients for m in self.transport.sent][1:],
                         [["big@example.org"]])
        self.transport.release()
        self.assertEqual(self.transport.sent[1].data, big)
        self.assertEqual(len(self.transport.sent), 3)

    def test_small_bodies_of_a_batch_read_together(self):
        """
        A batch of copies of different small messages (control replies)
        reads their bodies in one store run, not one each; each copy still
        goes with its own body.
        """
        from trackermail.store import outbox

        runs = []
        run = self.store.run
        self.patch(self.store, "run", lambda program, *a, **k: runs.append(
            program.__name__) or run(program, *a, **k))
        bodies = [BODY.replace(b"hello", b"reply %d" % n) for n in range(6)]
        for n, body in enumerate(bodies):
            self.enqueue(f"u{n}@example.org", body=body)
        self.start()
        self.assertEqual(sorted((m.recipients[0], m.data) for m in self.transport.sent),
                         [(f"u{n}@example.org", body) for n, body in enumerate(bodies)])
        self.assertEqual(runs.count(outbox.read_small_bodies.__name__), 1)
        self.assertEqual(runs.count(outbox.read_body.__name__), 0)
        self.assertEqual(states(self, self.store), [])

    def test_big_body_is_stored_in_chunks_and_sent_whole(self):
        """A 3.5 MiB body is stored as four chunks cut after line ends and sent as it was."""
        body = self.message(0, 3 * 1024 * 1024 + 512 * 1024)
        self.enqueue("a@example.org", body=body, prefix=b"X-Copy: 1\r\n")
        chunks = self.successResultOf(self.store.run(lambda: (yield Rows(
            "SELECT seq, LENGTH(data) FROM outbox_chunks ORDER BY seq"))))
        self.assertEqual([seq for seq, _ in chunks], [1, 2, 3])
        self.assertTrue(all(n <= 1024 * 1024 for _, n in chunks))
        self.start()
        [sent] = self.transport.sent
        self.assertEqual(sent.data, b"X-Copy: 1\r\n" + body)
        self.assertEqual(len(sent.parts), 5)
        self.assertTrue(all(p.endswith(b"\r\n") for p in sent.parts))

    def test_missing_body_fails_without_bounce(self):
        """A body deleted by hand fails its deliveries with a clear error, never a bounce."""
        body = self.message(0, 3 * 1024 * 1024)
        self.enqueue("a@example.org", body=body)
        self.successResultOf(self.store.run(lambda: (yield Exec(
            "DELETE FROM outbox_chunks WHERE seq = 2"))))
        self.start()
        self.assertEqual(self.transport.sent, [])
        rows = self.successResultOf(self.store.run(delivery_rows))
        self.assertEqual(rows[0][2:5], ("failed", 1, 554))
        self.assertIn("body is missing", rows[0][5])
        self.assertEqual(self.failures, [])


class LeaseTests(SenderMixin, SynchronousTestCase):
    def claim(self, node, lease=30.0):
        return self.successResultOf(self.store.run(
            claim_due, "sqlite", node, self.clock.seconds(), 10, lease))

    def test_restarted_node_sends_its_claims_at_once(self):
        """Deliveries a node was sending when it died are sent as soon as it starts again."""
        self.enqueue("a@example.org", "b@example.org")
        self.claim("n1", lease=600)
        self.start()
        self.assertEqual(sorted(r for m in self.transport.sent for r in m.recipients),
                         ["a@example.org", "b@example.org"])
        self.assertEqual(states(self, self.store), [])
        self.assertEqual(sent_counts(self, self.store), [2])

    def test_dead_nodes_claims_are_taken_over_when_the_lease_ends(self):
        """Another node's claims are taken over when their lease ends, without waiting for a poll."""
        self.enqueue("a@example.org")
        self.claim("dead", lease=30)
        self.start(self.make_sender(poll_interval=3600))
        self.clock.advance(29.9)
        self.assertEqual(self.transport.sent, [])
        self.clock.advance(0.1)
        self.assertEqual([m.recipients for m in self.transport.sent], [["a@example.org"]])
        self.assertEqual(states(self, self.store), [])
        self.assertEqual(sent_counts(self, self.store), [1])

    def test_leases_are_renewed_while_sending(self):
        """A slow transaction keeps its lease: renewed every lease/3 once it is older than that, never taken over."""
        self.transport.hold = True
        self.enqueue("a@example.org")
        self.start()
        self.assertEqual(claims(self, self.store), [("a@example.org", "n1", T0 + 30)])
        self.clock.advance(10)
        self.assertEqual(claims(self, self.store), [("a@example.org", "n1", T0 + 30)])
        self.clock.advance(10)
        self.assertEqual(claims(self, self.store), [("a@example.org", "n1", T0 + 50)])
        for _ in range(12):
            self.clock.advance(10)
        self.assertEqual(self.claim("other"), [])
        self.assertEqual(states(self, self.store), [("a@example.org", "sending", 1)])
        self.transport.release()
        self.assertEqual(states(self, self.store), [])
        self.assertEqual(sent_counts(self, self.store), [1])

    def test_result_of_a_delivery_taken_over_is_not_recorded(self):
        """If another node took a delivery over, the late result does not overwrite its state."""
        self.transport.hold = True
        self.enqueue("a@example.org")
        self.start()
        self.successResultOf(self.store.run(lambda: (yield Exec(
            "UPDATE outbox_deliveries SET claimed_by = 'other'"))))
        self.transport.release()
        self.assertEqual(claims(self, self.store)[0][1], "other")
        self.assertEqual(self.sender.sent, 0)


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
    def test_sent_messages_are_purged_after_a_day(self):
        """Sent copies are forgotten at once; their messages, bodies and chunks a day later; failed ones stay."""
        clock = Clock()
        clock.advance(T0)
        store = make_memory_store(self)
        transport = MemoryOutboundTransport()
        transport.script("bad@example.org", (550, "5.1.1 no"))
        sender = OutboxSender(store, transport, clock, node="n", rcpt_hold=0)
        big = b"x" * 100 + b"\n" + b"y" * (2 * 1024 * 1024) + b"\n"
        store.run(enqueue, BODY, [("a@example.org", "s"), ("bad@example.org", "s")],
                  clock.seconds())
        store.run(enqueue, big, [("c@example.org", "s")], clock.seconds())
        sender.startService()
        self.addCleanup(sender.stopService)
        self.assertEqual(states(self, store), [("bad@example.org", "failed", 1)])
        self.assertEqual(sent_counts(self, store), [1, 1])
        clock.advance(86400 - 1)
        self.assertEqual(sent_counts(self, store), [1, 1])
        clock.advance(3601)
        self.assertEqual(states(self, store), [("bad@example.org", "failed", 1)])
        [kept] = self.successResultOf(store.run(message_counts))
        self.assertEqual((kept.sent, kept.left), (1, {"failed": 1}))
        self.assertIsNone(self.successResultOf(store.run(read_body, kept.id + 1)))
        count = self.successResultOf(store.run(lambda: (yield Value(
            "SELECT COUNT(*) FROM outbox_chunks"))))
        self.assertEqual(count, 0)
