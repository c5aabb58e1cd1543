"""
PostgreSQL restarted under the tracker's feet.

A restart is simulated on this test run's own database only (the machine's
cluster is shared with other tests and engineers): its backends are killed
with C{pg_terminate_backend}, and for an outage that lasts, new connections
are refused with C{ALTER DATABASE ... ALLOW_CONNECTIONS false} meanwhile.

What must hold: processing fails with a temporary failure, the messages wait
in the spool with their retry state, txpostgres' DeadConnectionDetector
reconnects by itself, and after that every message is processed exactly
once. The spool watcher's retry timing runs on a L{task.Clock}; only the
database I/O and the reconnection run on the real reactor.
"""

from __future__ import annotations

import inspect
import os
import time
from urllib.parse import urlsplit

import psycopg2
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.pipeline import FQDN, NOW, make_config
from tests.support.stores import _admin_dsn, make_pg_store, test_database_dsn
from trackermail.errors import StoreUnavailable
from trackermail.ingress.spool import Spool
from trackermail.outbound.sender import OutboxSender
from trackermail.processing import Processor, SpoolWatcher
from trackermail.service import default_handlers
from trackermail.store.outbox import enqueue
from trackermail.store.outbox_report import delivery_rows, message_counts
from trackermail.store.sql import Rows, Value
from trackermail.store.subscriptions import subscribe
from trackermail.vendor import load_vendor

SUBSCRIBERS = ("alice@example.org", "bob@example.net")
RETRY_DELAYS = (150, 300, 600, 1800, 3600, 7200)


class FakeNotifier:
    """No inotify: the tests call L{SpoolWatcher.scan} themselves."""

    def startReading(self):
        pass

    def watch(self, *args, **kwargs):
        pass

    def loseConnection(self):
        pass


def bug_mail(n: int) -> bytes:
    return (
        f"From: Reporter <rep{n}@example.net>\n"
        f"Subject: Bug#{n}: dpkg broken\n"
        f"Message-ID: <bug{n}@bugs.example.org>\n"
        f"X-Distro-Tracker-Package: dpkg\n"
        f"X-Distro-Tracker-Keyword: bts\n"
        f"\n"
        f"report {n}\n"
    ).encode()


def _driver_errors():
    from txpostgres.txpostgres import RollbackFailed

    return (psycopg2.OperationalError, psycopg2.InterfaceError, RollbackFailed)


async def wait_for(predicate, what: str, timeout: float = 60.0):
    """Poll C{predicate()} (may return a Deferred) on the reactor, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.05, lambda: None)


class PostgresRestartTests(TestCase):
    timeout = 120

    async def setUp(self):
        self.store = await make_pg_store(self, size=2)
        self.dsn = test_database_dsn()
        self.dbname = urlsplit(self.dsn).path.lstrip("/")
        # A connection to the admin database: it survives the kills.
        self.admin = psycopg2.connect(_admin_dsn(), connect_timeout=5)
        self.admin.autocommit = True
        self.addCleanup(self.admin.close)
        self.addCleanup(self.allow_connections, True)
        for email in SUBSCRIBERS:
            await self.store.run(subscribe, email, "dpkg", True, NOW)

        self.clock = task.Clock()
        self.clock.advance(NOW)
        config = make_config(tracker={"vendor": "generic"})
        self.processor = Processor(config, self.store, default_handlers(),
                                   vendor=load_vendor("generic"), clock=self.clock)
        self.spool = Spool(self.mktemp(), fsync=False)
        self.addCleanup(self.spool.close)
        self.watcher = SpoolWatcher(
            self.spool, self.processor.process_file, clock=self.clock, concurrency=4,
            rescan_interval=0, retry_delays=RETRY_DELAYS, notifier_factory=FakeNotifier,
        )
        self.watcher.startService()
        self.addCleanup(self.watcher.stopService)
        self.sent = 0

    # -- helpers -------------------------------------------------------------

    def kill_backends(self) -> int:
        """
        Terminate every backend of the test database and wait until they are
        gone (synchronously: the reactor sees nothing in between).
        """
        with self.admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.dbname,),
            )
            return len(cur.fetchall())

    def allow_connections(self, allowed: bool) -> None:
        with self.admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{self.dbname}" ALLOW_CONNECTIONS '
                        f'{"true" if allowed else "false"}')

    def spool_messages(self, count: int) -> list[str]:
        names = []
        for _ in range(count):
            self.sent += 1
            path = self.spool.deliver_sync(bug_mail(self.sent), f"dispatch@{FQDN}",
                                           "owner@bugs.example.org")
            names.append(os.path.basename(path))
        return names

    def listing(self, sub: str) -> list[str]:
        return sorted(n for n in os.listdir(self.spool.dir(sub)) if not n.endswith(".reason"))

    async def store_recovered(self) -> bool:
        """True once every pooled connection answers (one query per connection)."""

        def ping():
            return (yield Value("SELECT 1"))

        results = await defer.DeferredList(
            [self.store.run(ping) for _ in range(self.store.size)], consumeErrors=True)
        return all(ok and value == 1 for ok, value in results)

    async def counts(self):
        def program():
            processed = yield Value("SELECT COUNT(*) FROM processed_messages")
            bodies = yield Rows("SELECT body FROM outbox_messages ORDER BY id")
            deliveries = yield Rows(
                "SELECT recipient, message_id FROM outbox_deliveries ORDER BY id")
            return processed, [bytes(b) for (b,) in bodies], deliveries

        return await self.store.run(program)

    async def assert_each_processed_once(self):
        processed, bodies, deliveries = await self.counts()
        self.assertEqual(processed, self.sent)
        ids = []
        for body in bodies:
            for n in range(1, self.sent + 1):
                if f"<bug{n}@bugs.example.org>".encode() in body:
                    ids.append(n)
        self.assertEqual(sorted(ids), list(range(1, self.sent + 1)),
                         "one forwarded body per message, none twice")
        self.assertEqual(len(deliveries), self.sent * len(SUBSCRIBERS))
        self.assertEqual(len(set(deliveries)), len(deliveries))
        self.assertEqual(self.listing("new"), [])
        self.assertEqual(self.listing("failed"), [])
        self.assertEqual(self.listing("broken"), [])
        self.assertEqual(os.listdir(self.spool.dir("retry")), [])

    async def drain_retries(self):
        """
        Let the clock reach each due retry until nothing waits (bounded by the
        retry schedule: a message must never end in broken/ here).
        """
        for delay in RETRY_DELAYS:
            if not self.watcher.waiting_for_retry:
                return
            self.clock.advance(delay)
            await self.watcher.when_idle()
        self.assertEqual(self.watcher.waiting_for_retry, [])

    def assert_waiting(self, names, attempts: int):
        self.assertEqual(self.watcher.waiting_for_retry, sorted(names))
        self.assertEqual(self.listing("new"), sorted(names))
        self.assertEqual(self.listing("failed") + self.listing("broken"), [])
        for name in names:
            state = self.spool.read_retry_state(name)
            self.assertEqual(state["attempts"], attempts, name)
            self.assertIn("StoreUnavailable", state["reason"])
            self.assertEqual(state["next"], self.clock.seconds() + RETRY_DELAYS[attempts - 1])

    # -- tests ---------------------------------------------------------------

    async def test_connections_killed_between_messages(self):
        """Mail arriving right after the database dropped every connection waits and is processed once."""
        self.spool_messages(3)
        self.watcher.scan()
        await self.watcher.when_idle()
        self.assertEqual(self.listing("new"), [])

        self.assertEqual(self.kill_backends(), 2)
        names = self.spool_messages(6)
        self.watcher.scan()
        await self.watcher.when_idle()
        # The first messages met the dead connections; the others were queued
        # behind them and failed fast while the detector reconnects.
        self.assertTrue(self.watcher.waiting_for_retry)
        for name in self.watcher.waiting_for_retry:
            self.assertIn(name, names)
        self.assertEqual(self.listing("failed") + self.listing("broken"), [])

        await wait_for(self.store_recovered, "the pool to reconnect")
        await self.drain_retries()
        await self.assert_each_processed_once()
        self.flushLoggedErrors(*_driver_errors())

    async def test_connections_killed_mid_transaction(self):
        """Transactions cut off half-way leave no trace; their messages are retried and processed once."""
        names = self.spool_messages(6)
        self.watcher.scan()
        # The first transactions have sent their BEGIN and wait for replies.
        self.assertEqual(self.watcher.in_flight, 4)
        self.assertEqual(self.kill_backends(), 2)
        await self.watcher.when_idle()
        waiting = self.watcher.waiting_for_retry
        self.assertTrue(waiting)
        self.assertTrue(set(waiting) <= set(names))
        self.assertEqual(self.listing("new"), sorted(waiting))

        await wait_for(self.store_recovered, "the pool to reconnect")
        await self.drain_retries()
        await self.assert_each_processed_once()
        self.flushLoggedErrors(*_driver_errors())

    async def test_database_down_for_a_while(self):
        """While PostgreSQL refuses connections, mail waits through several retries; then it all goes through once."""
        self.spool_messages(2)
        self.watcher.scan()
        await self.watcher.when_idle()

        self.allow_connections(False)
        self.kill_backends()
        names = self.spool_messages(4)
        self.watcher.scan()
        await self.watcher.when_idle()
        self.assert_waiting(names, attempts=1)

        # Still down at the first retry: every message fails again, fast.
        self.clock.advance(RETRY_DELAYS[0])
        await self.watcher.when_idle()
        self.assert_waiting(names, attempts=2)
        with self.assertRaises(StoreUnavailable):
            await self.store.run(lambda: (yield Value("SELECT 1")))

        self.allow_connections(True)
        await wait_for(self.store_recovered, "the pool to reconnect")
        self.clock.advance(RETRY_DELAYS[1])
        await self.watcher.when_idle()
        self.assertEqual(self.watcher.waiting_for_retry, [])
        await self.assert_each_processed_once()
        self.flushLoggedErrors(*_driver_errors())

    async def test_commit_reply_lost(self):
        """A commit whose reply never arrived is recognised on retry: no second copy is forwarded."""
        real_run = self.store.run
        lost = []

        def run_losing_first_reply(program, *args, **kwargs):
            d = real_run(program, *args, **kwargs)
            if not lost:
                lost.append(program)

                def drop(result):
                    raise StoreUnavailable("PostgreSQL: server closed the connection unexpectedly")

                d.addCallback(drop)
            return d

        self.store.run = run_losing_first_reply
        [name] = self.spool_messages(1)
        self.watcher.scan()
        await self.watcher.when_idle()
        self.assert_waiting([name], attempts=1)
        self.clock.advance(RETRY_DELAYS[0])
        await self.watcher.when_idle()
        await self.assert_each_processed_once()

    async def test_listener_relistens_after_reconnect(self):
        """After the connections come back, other nodes' outbox notifications still wake this node."""
        woken = []
        await self.store.listen("outbox", lambda: woken.append(1))
        other = psycopg2.connect(self.dsn, connect_timeout=5)
        other.autocommit = True
        self.addCleanup(other.close)
        with other.cursor() as cur:
            cur.execute("NOTIFY outbox")
        await wait_for(lambda: woken, "the first notification")

        self.kill_backends()
        await wait_for(self.store_recovered, "the pool to reconnect")
        # `other` was killed too: a fresh connection plays the other node.
        other2 = psycopg2.connect(self.dsn, connect_timeout=5)
        other2.autocommit = True
        self.addCleanup(other2.close)

        def notify_and_check():
            with other2.cursor() as cur:
                cur.execute("NOTIFY outbox")
            return len(woken) >= 2

        # The listener reconnects on its own schedule; notify until it hears.
        await wait_for(notify_and_check, "a notification after the restart")
        self.flushLoggedErrors(*_driver_errors())

    async def test_close_during_outage(self):
        """Stopping the tracker while PostgreSQL is down stops the reconnection attempts too."""
        self.allow_connections(False)
        self.kill_backends()
        with self.assertRaises(StoreUnavailable):
            await self.store.run(lambda: (yield Value("SELECT 1")))
        await self.store.close()
        self.allow_connections(True)
        # Past the detector's next attempts (1.7 s, then 2.9 s later).
        await task.deferLater(reactor, 5, lambda: None)
        with self.admin.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = %s",
                        (self.dbname,))
            self.assertEqual(cur.fetchone()[0], 0)
        self.flushLoggedErrors(*_driver_errors())


class UnreachableStore:
    """
    Wraps a store; while C{down}, every transaction fails the way
    L{trackermail.store.postgres.PostgresStore} fails during a restart.
    """

    def __init__(self, store):
        self.store = store
        self.dialect = store.dialect
        self.down = False
        self.refused = 0

    def run(self, program, *args, **kwargs):
        if self.down:
            self.refused += 1
            return defer.fail(StoreUnavailable(
                "PostgreSQL: server closed the connection unexpectedly"))
        return self.store.run(program, *args, **kwargs)

    def listen(self, channel, callback):
        return self.store.listen(channel, callback)


class SenderDuringDatabaseRestartTests(SynchronousTestCase):
    """
    The outbox sender while PostgreSQL is away: it already handed copies to
    the smarthost and must record that before their lease runs out, or they
    are claimed and sent again.
    """

    def setUp(self):
        from tests.support.outbound import MemoryOutboundTransport
        from tests.support.stores import make_memory_store

        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.memory = make_memory_store(self)
        self.store = UnreachableStore(self.memory)
        self.transport = MemoryOutboundTransport(hold=True)
        self.sender = OutboxSender(self.store, self.transport, self.clock, node="n1",
                                   batch_size=10, lease=600, retry_initial=60,
                                   poll_interval=30)

    def test_results_recorded_after_a_long_outage(self):
        """Copies sent just before a 15-minute database outage are recorded afterwards, not sent twice."""
        self.outage(["a@example.org", "b@example.org", "c@example.org"])

    def test_full_batch_not_reclaimed_after_outage(self):
        """With a full batch in flight, the sender does not claim it again once the database is back."""
        self.sender.batch_size = 3
        self.outage(["a@example.org", "b@example.org", "c@example.org"])

    def outage(self, rcpts):
        self.successResultOf(self.memory.run(enqueue, 
            b"Subject: x\n\nx\n", [(r, "bounces+x@tracker.example.org") for r in rcpts],
            self.clock.seconds()))
        self.sender.startService()
        self.addCleanup(self.sender.stopService)
        self.assertEqual(len(self.transport.sent), 3)

        self.store.down = True
        self.transport.release()  # the smarthost took them: 250 each
        for _ in range(15 * 60):
            self.clock.advance(1)
        self.assertGreater(self.store.refused, 0)
        self.store.down = False
        for _ in range(30 * 60):
            self.clock.advance(1)

        self.transport.release()
        sent = [r for m in self.transport.sent for r in m.recipients]
        self.assertEqual(sorted(sent), rcpts, "each copy handed to the smarthost once")
        # Recorded as sent: the deliveries are gone, the message counts each copy once.
        self.assertEqual(self.successResultOf(self.memory.run(delivery_rows)), [])
        [counts] = self.successResultOf(self.memory.run(message_counts))
        self.assertEqual((counts.sent, counts.left), (3, {}))
