"""
Whole trackers (C{twistd -n tracker} children) killed with SIGKILL while they
send through a slow smarthost: a restarted node re-sends only what was in
flight, and at once; on a shared PostgreSQL outbox the surviving node takes
over a dead node's deliveries within about a lease.
"""

from __future__ import annotations

import collections
import os
import signal
import smtplib
import sqlite3
import time

import psycopg2
from twisted.internet import threads
from twisted.trial.unittest import TestCase

from tests.support.net import listen_local, poll
from tests.support.outbound import SinkFactory, SlowSinkFactory
from tests.support.stores import make_pg_store
from tests.support.tracker import FQDN, TrackerProcess
from trackermail.store.outbox_report import message_counts
from trackermail.store.sql import SyncDriver
from trackermail.store.sqlite import MemoryStore
from trackermail.store.subscriptions import subscribe


def message(i: int) -> bytes:
    return (f"From: rep@example.net\r\nSubject: bug {i}\r\n"
            f"Message-ID: <send-{i}@example.net>\r\n"
            f"X-Distro-Tracker-Package: pkg\r\nX-Distro-Tracker-Keyword: bts\r\n"
            f"\r\nbody {i}\r\n").encode()


def lmtp_send(port: int, messages: list[bytes]) -> int:
    client = smtplib.LMTP("127.0.0.1", port)
    try:
        for data in messages:
            client.sendmail("rep@example.net", [f"dispatch@{FQDN}"], data)
    finally:
        client.quit()
    return len(messages)


def subscribe_sqlite(path: str, rcpts: list[str]) -> None:
    store = MemoryStore(path)
    try:
        for r in rcpts:
            store.run(subscribe, r, "pkg")
    finally:
        store.close()


class SQLiteCounts:
    """The outbox of a running tracker's SQLite file, read without taking its write lock."""

    def __init__(self, path: str):
        self.path = path

    def messages(self) -> list[tuple[int, dict[str, int]]]:
        """(copies sent, deliveries left by state) of each outbox message."""
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            cursor = conn.cursor()
            cursor.execute("BEGIN")  # one snapshot for both questions
            counts = SyncDriver().run(cursor, message_counts())
            cursor.execute("COMMIT")
            return [(c.sent, c.left) for c in counts]
        finally:
            conn.close()

    def sent(self) -> int:
        return sum(sent for sent, _ in self.messages())


def start(testcase, tracker: TrackerProcess) -> None:
    """
    Start C{tracker}, and stop it at cleanup without blocking the reactor:
    its pool says QUIT to our in-process smarthost on the way out.
    """
    tracker.start()

    async def stop():
        proc = tracker.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            await poll(lambda: proc.poll() is not None, 30, "the tracker to stop")

    testcase.addCleanup(stop)


def received(sink) -> collections.Counter:
    return collections.Counter(r for m in sink.messages for r in m.recipients)


class CrashWhileSendingTests(TestCase):
    timeout = 180

    def tracker(self, sink, **outbound) -> TrackerProcess:
        port = listen_local(self, sink)
        settings = {"enabled": True, "smarthost": f"127.0.0.1:{port}", "connections": 4,
                    "retry_initial": 1}
        settings.update(outbound)
        tracker = TrackerProcess(self, spool={"rescan_interval": 1}, outbound=settings)
        tracker.cli("migrate")
        return tracker

    async def test_sigkill_resends_only_what_was_in_flight(self):
        """Killed while sending 600 copies, the restarted node re-sends only the unrecorded ones, at once."""
        sink = SlowSinkFactory(delay=0.02)
        # A lease far longer than the test: only releasing its own claims at
        # start lets the restarted node send them again in time.
        tracker = self.tracker(sink, lease=600)
        db = os.path.join(tracker.dir, "tracker.sqlite")
        rcpts = [f"user{i}@d{i % 7}.example" for i in range(600)]
        subscribe_sqlite(db, rcpts)
        start(self, tracker)
        await threads.deferToThread(lmtp_send, tracker.ports["lmtp"], [message(0)])
        await poll(lambda: len(sink.messages) >= 200, 60, "200 copies to reach the smarthost")
        tracker.kill()
        await sink.wait_closed()
        at_kill = len(sink.messages)
        recorded = SQLiteCounts(db).sent()
        unrecorded = at_kill - recorded
        self.assertLess(at_kill, 600, "the kill should have cut the fan-out")
        self.assertLessEqual(unrecorded, 40, "results were recorded late")

        restarted = time.monotonic()
        start(self, tracker)
        await poll(lambda: set(received(sink)) == set(rcpts), 60,
                   "every subscriber to get a copy")
        self.assertLess(time.monotonic() - restarted, 60)
        await poll(lambda: SQLiteCounts(db).messages() == [(600, {})], 30,
                   "every delivery to be recorded as sent")
        twice = sum(n - 1 for n in received(sink).values())
        self.assertEqual(twice, unrecorded, "copies sent twice are exactly those in flight")

    async def test_kill_right_after_the_last_250(self):
        """31 messages acknowledged just before a SIGKILL all reach the subscriber soon after the restart."""
        sink = SinkFactory()
        tracker = self.tracker(sink, lease=600)
        db = os.path.join(tracker.dir, "tracker.sqlite")
        subscribe_sqlite(db, ["jane@example.org"])
        start(self, tracker)
        await threads.deferToThread(lmtp_send, tracker.ports["lmtp"],
                                    [message(i) for i in range(31)])
        tracker.kill()
        start(self, tracker)
        await poll(lambda: len(sink.messages) >= 31 and SQLiteCounts(db).messages() == [
            (1, {})] * 31, 30, "31 copies to be delivered and recorded")
        ids = [m.data.split(b"Message-ID: <", 1)[1].split(b">", 1)[0] for m in sink.messages]
        self.assertEqual(len(set(ids)), 31)


class TwoNodesTests(TestCase):
    timeout = 180

    async def test_survivor_takes_over_within_a_lease(self):
        """Two nodes share a PostgreSQL outbox; one is killed: the other sends its deliveries within seconds."""
        store = await make_pg_store(self)
        rcpts = [f"user{i}@d{i % 5}.example" for i in range(600)]
        for r in rcpts:
            await store.run(subscribe, r, "pkg")
        sink = SlowSinkFactory(delay=0.02)
        port = listen_local(self, sink)
        outbound = {"enabled": True, "smarthost": f"127.0.0.1:{port}", "connections": 2,
                    "retry_initial": 1, "lease": 2, "batch_size": 100}
        a = TrackerProcess(self, database={"url": store.dsn}, outbound=outbound,
                           tracker={"node": "node-a"})
        b = TrackerProcess(self, database={"url": store.dsn}, outbound=outbound,
                           tracker={"node": "node-b"}, lmtp={"listen": []},
                           http={"listen": ["tcp:0:interface=127.0.0.1"]})
        start(self, a)
        start(self, b)
        admin = psycopg2.connect(store.dsn)
        admin.autocommit = True
        self.addCleanup(admin.close)

        def claimed_by(node):
            with admin.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM outbox_deliveries"
                            " WHERE state = 'sending' AND claimed_by = %s", (node,))
                return cur.fetchone()[0]

        async def all_sent():
            counts = await store.run(message_counts)
            return [(c.sent, c.left) for c in counts] == [(600, {})]

        await threads.deferToThread(lmtp_send, a.ports["lmtp"], [message(0)])
        await poll(lambda: claimed_by("node-b") > 0 and len(sink.messages) >= 50, 60,
                   "node-b to be sending")
        b.kill()
        killed = time.monotonic()
        self.assertGreater(claimed_by("node-b"), 0)
        await poll(lambda: claimed_by("node-b") == 0, 20, "node-a to take node-b's claims")
        taken_over = time.monotonic() - killed
        self.assertLess(taken_over, 6, "taken over within about a lease (2 s)")
        await poll(all_sent, 60, "every delivery to be sent")
        self.assertEqual(set(received(sink)), set(rcpts))
        twice = sum(n - 1 for n in received(sink).values())
        self.assertLessEqual(twice, 20, "only copies node-b had in flight are sent twice")
