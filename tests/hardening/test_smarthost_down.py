"""
The smarthost is down for 10 minutes (of L{task.Clock} time), or refuses
our mail for days.

The outbox sender keeps every delivery queued and retries it with backoff;
once the smarthost is back each delivery goes out exactly once. Two ways:
an in-memory transport scripted by the clock (refusals as 421 replies and as
failed Deferreds), and the real L{SMTPPool} against a loopback SMTP sink
whose port is closed, then answers 421 at the greeting, then works.

A smarthost that is up but refuses us ("554 5.7.1 Relay access denied" at
MAIL FROM, or the same refusal at RCPT for every domain) is not the
recipients' fault: four days of it count no bounce and unsubscribe nobody.
"""

from __future__ import annotations

import collections
import time

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.outbound import MemoryOutboundTransport, SinkFactory
from tests.support.stores import make_memory_store
from trackermail.outbound.interface import CONNECT, Reply
from trackermail.outbound.pool import SMTPPool
from trackermail.outbound.sender import OutboxSender
from trackermail.store import outbox, outbox_report

T0 = 1_795_000_000.0
DOWN = 600.0
BODY = b"Subject: news\r\nMessage-ID: <n1@tracker.example.org>\r\n\r\nhello\r\n"


def enqueue(testcase, store, now, rcpts, body=BODY):
    return testcase.successResultOf(store.run(outbox.enqueue,
        body, [(r, f"bounces+{i}@tracker.example.org") for i, r in enumerate(rcpts)], now))


class DownUntil(MemoryOutboundTransport):
    """
    A smarthost that cannot be reached before C{until}: odd attempts get 421
    replies (what the pool reports for a refused connection), even ones a
    failed Deferred (a transport that broke its contract).
    """

    def __init__(self, clock, until):
        super().__init__()
        self.clock = clock
        self.until = until
        self.refused = collections.Counter()
        self._calls = 0

    def send(self, mail_from, recipients, data):
        if self.clock.seconds() < self.until:
            self._calls += 1
            for r in recipients:
                self.refused[r] += 1
            if self._calls % 2:
                return defer.succeed(
                    {r: Reply(421, "4.4.1 cannot connect to smarthost: Connection refused",
                              CONNECT) for r in recipients})
            return defer.fail(ConnectionRefusedError("smarthost"))
        return super().send(mail_from, recipients, data)


class ScriptedSmarthostTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.store = make_memory_store(self)
        self.transport = DownUntil(self.clock, T0 + DOWN)
        self.sender = OutboxSender(self.store, self.transport, self.clock, node="n1",
                                   batch_size=7, retry_initial=60, retry_max=3600,
                                   give_up_days=5, poll_interval=30)

    def rows(self):
        return self.successResultOf(self.store.run(outbox_report.delivery_rows))

    def test_ten_minutes_down_nothing_lost_nothing_twice(self):
        """Mail queued while the smarthost is down for 10 minutes is delivered once each after it returns."""
        rcpts = [f"user{i}@example.org" for i in range(20)]
        enqueue(self, self.store, self.clock.seconds(), rcpts[:15])
        self.sender.startService()
        self.addCleanup(self.sender.stopService)
        # More mail arrives during the outage.
        self.clock.advance(200)
        enqueue(self, self.store, self.clock.seconds(), rcpts[15:],
                body=BODY.replace(b"n1@", b"n2@"))

        while self.clock.seconds() < T0 + DOWN:
            self.assertEqual(self.transport.delivered, [])
            self.assertLessEqual({state for _, _, state, *_ in self.rows()}, {"queued", "sending"})
            self.clock.advance(1)
        # Every attempt the smarthost refused is counted on its delivery.
        rows = self.rows()
        self.assertEqual(len(rows), 20)
        for rcpt, _, state, attempts, code, _ in rows:
            self.assertEqual((state, attempts), ("queued", self.transport.refused[rcpt]), rcpt)
            self.assertIn(code, (421, 451), rcpt)

        # Backoff 60, 120, 240, 480 s: the last retries are due by T0 + 1000.
        for _ in range(600):
            self.clock.advance(1)
        delivered = collections.Counter(rcpt for _, rcpt in self.transport.delivered)
        self.assertEqual(sorted(delivered), sorted(rcpts))
        self.assertEqual(set(delivered.values()), {1})
        for rcpt in rcpts:
            self.assertGreaterEqual(self.transport.refused[rcpt], 2, rcpt)
        # Recorded as sent: nothing left, each message counts its copies once.
        self.assertEqual(self.rows(), [])
        counts = self.successResultOf(self.store.run(outbox_report.message_counts))
        self.assertEqual([c.sent for c in counts], [15, 5])
        self.assertEqual(self.sender.failed, 0)

    def test_backoff_spaces_attempts(self):
        """While down, a delivery is tried with growing gaps, not hammered."""
        enqueue(self, self.store, self.clock.seconds(), ["a@example.org"])
        tries = []
        send = self.transport.send

        def spy(mail_from, recipients, data):
            tries.append(self.clock.seconds() - T0)
            return send(mail_from, recipients, data)

        self.transport.send = spy
        self.sender.startService()
        self.addCleanup(self.sender.stopService)
        for _ in range(1200):
            self.clock.advance(1)
        self.assertEqual(tries, [0, 60, 180, 420, 900])
        self.assertEqual(self.transport.delivered, [("bounces+0@tracker.example.org",
                                                     "a@example.org")])


class GreetingRefuser(Protocol):
    """A smarthost that is up but refuses service, as an overloaded MTA does."""

    def connectionMade(self):
        self.transport.write(b"421 4.3.2 sink.example Service not available, try later\r\n")
        self.transport.loseConnection()


class SwitchableSink(SinkFactory):
    def __init__(self):
        super().__init__()
        self.refuse = False
        self.refused = 0

    def buildProtocol(self, addr):
        if self.refuse:
            self.refused += 1
            p = GreetingRefuser()
            p.factory = self
            return p
        return super().buildProtocol(addr)


class _Endpoint:
    """Connects to wherever the sink listens now (it may come back elsewhere)."""

    def __init__(self, where):
        self.where = where

    def connect(self, factory):
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.where["port"],
                                  timeout=10).connect(factory)


async def run_until(clock, sender, pool, until: float, step: float) -> None:
    """Move the clock to C{until} by C{step}s, letting real I/O settle at each step."""
    while clock.seconds() < until:
        clock.advance(step)
        await settle(sender, pool)


async def settle(sender, pool, budget: float = 30.0):
    """
    Let real I/O finish before the clock moves on: until the sender is idle,
    or its sends wait in the pool for the pool's backoff timer (no connection
    open or opening for a few polls), which only the clock can fire.
    """
    idle = sender.when_idle()
    deadline = time.monotonic() + budget
    quiet = 0
    while not idle.called:
        quiet = quiet + 1 if pool.queued and not pool.open_connections else 0
        if quiet >= 3:
            return
        if time.monotonic() > deadline:
            raise AssertionError("the sender did not settle")
        await task.deferLater(reactor, 0.005, lambda: None)


class RealPoolSmarthostTests(TestCase):
    timeout = 120

    async def test_sink_stopped_then_refusing_then_back(self):
        """The real SMTP pool rides out a closed port and 421 greetings; each copy reaches the sink once."""
        clock = task.Clock()
        clock.advance(T0)
        sink = SwitchableSink()
        port = reactor.listenTCP(0, sink, interface="127.0.0.1")
        where = {"port": port.getHost().port}
        await port.stopListening()

        store = make_memory_store(self)
        # The pool's own timers (backoff, idle, reply timeouts) run on the
        # same clock as the sender; only the sockets are real.
        pool = SMTPPool(clock, "127.0.0.1", where["port"], connections=2,
                        helo="tracker.example.org", endpoint=_Endpoint(where))
        sender = OutboxSender(store, pool, clock, node="n1", batch_size=5,
                              retry_initial=60, retry_max=3600, poll_interval=30)
        rcpts = [f"user{i}@example.org" for i in range(12)]
        enqueue(self, store, clock.seconds(), rcpts)
        sender.startService()
        self.addCleanup(pool.close)
        self.addCleanup(sender.stopService)

        # Minutes 0-5: nothing listens on the port.
        await run_until(clock, sender, pool, T0 + 300, 5)
        self.assertEqual(sink.connections, 0)
        # Minutes 5-10: the MTA is back but refuses service.
        sink.refuse = True
        try:
            port = reactor.listenTCP(where["port"], sink, interface="127.0.0.1")
        except CannotListenError:
            # Someone took the port meanwhile: the smarthost comes back elsewhere.
            port = reactor.listenTCP(0, sink, interface="127.0.0.1")
            where["port"] = port.getHost().port
        self.addCleanup(port.stopListening)
        await run_until(clock, sender, pool, T0 + DOWN, 5)
        self.assertGreater(sink.refused, 0)
        self.assertEqual(sink.messages, [])
        rows = await store.run(outbox_report.delivery_rows)
        self.assertEqual({r[2] for r in rows}, {"queued"})
        self.assertEqual(len(rows), 12)
        self.assertTrue(all(r[3] >= 2 for r in rows), rows)

        sink.refuse = False
        await run_until(clock, sender, pool, T0 + DOWN + 900, 5)
        got = collections.Counter(r for m in sink.messages for r in m.recipients)
        self.assertEqual(sorted(got), sorted(rcpts))
        self.assertEqual(set(got.values()), {1})
        self.assertEqual(await store.run(outbox_report.delivery_rows), [])
        self.assertEqual([c.sent for c in await store.run(outbox_report.message_counts)], [12])
        await pool.close()
        await sink.wait_closed()


class RefusingSmarthostTests(TestCase):
    """
    The real pool and the real bounce policy against a sink that refuses
    us: for four days of clock time nothing is counted against the
    subscribers; once the smarthost is fixed, every copy goes out once.
    """

    timeout = 120

    async def refused_for_days(self, refuse, unrefuse):
        import datetime

        from tests.support.pipeline import FQDN, make_pipeline
        from trackermail import metrics
        from trackermail.bounces import verp
        from trackermail.bounces.policy import permanent_failure
        from trackermail.store.bounce_stats import bounce_stats
        from trackermail.store.subscriptions import is_subscribed, subscribe

        processor, store, _ = make_pipeline(self)
        clock = task.Clock()
        clock.advance(T0)
        secret = processor.config.tracker.secret_key
        today = datetime.datetime.fromtimestamp(T0, datetime.timezone.utc).date()
        rcpts = [f"user{i}@d{i % 4}.example" for i in range(8)]
        for r in rcpts:
            store.run(subscribe, r, "dpkg")
        self.successResultOf(store.run(outbox.enqueue, BODY, [
            (r, verp.encode(r, today, secret, FQDN)) for r in rcpts], T0))
        sink = SinkFactory()
        refuse(sink, rcpts)
        port = reactor.listenTCP(0, sink, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        where = {"port": port.getHost().port}
        pool = SMTPPool(clock, "127.0.0.1", where["port"], connections=2,
                        helo="tracker.example.org", endpoint=_Endpoint(where))
        bounces = metrics.REGISTRY.get_sample_value("trackermail_bounces_counted_total") or 0
        sender = OutboxSender(store, pool, clock, node="n1", retry_initial=60,
                              retry_max=3600, give_up_days=5,
                              on_permanent_failure=permanent_failure(processor.context))
        sender.startService()
        self.addCleanup(pool.close)
        self.addCleanup(sender.stopService)

        await run_until(clock, sender, pool, T0 + 4 * 86400, 600)
        rows = await store.run(outbox_report.delivery_rows)
        self.assertEqual({r[2] for r in rows}, {"queued"})
        self.assertTrue(all(r[3] > 50 for r in rows), "retried all along")
        self.assertEqual(sink.messages, [])
        self.assertIsNotNone(sender.watch.refusing)
        self.assertEqual(metrics.REGISTRY.get_sample_value("trackermail_smarthost_refusing"), 1)
        for r in rcpts:
            self.assertTrue(await store.run(is_subscribed, r, "dpkg"), r)
            self.assertEqual([s.bounced for s in await store.run(bounce_stats, r)], [])
        self.assertEqual(
            (metrics.REGISTRY.get_sample_value("trackermail_bounces_counted_total") or 0)
            - bounces, 0)

        unrefuse(sink)
        await run_until(clock, sender, pool, T0 + 4 * 86400 + 3600, 600)
        got = collections.Counter(r for m in sink.messages for r in m.recipients)
        self.assertEqual(sorted(got), sorted(rcpts))
        self.assertEqual(set(got.values()), {1})
        self.assertIsNone(sender.watch.refusing)
        await pool.close()
        await sink.wait_closed()

    async def test_relay_access_denied_at_mail(self):
        """'554 5.7.1 Relay access denied' to MAIL FROM for four days counts no bounce."""
        def refuse(sink, rcpts):
            sink.mail_reply = (554, "5.7.1 <bounces@tracker.example.org>: Relay access denied")

        def unrefuse(sink):
            sink.mail_reply = None

        await self.refused_for_days(refuse, unrefuse)

    async def test_same_refusal_for_every_domain(self):
        """The same RCPT refusal for recipients of every domain is the smarthost's doing: no bounce."""
        def refuse(sink, rcpts):
            for r in rcpts:
                sink.replies[r] = (550, f"5.7.1 <{r}>: Recipient address rejected: Access denied")

        def unrefuse(sink):
            sink.replies.clear()

        await self.refused_for_days(refuse, unrefuse)
