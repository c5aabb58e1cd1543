"""
The outbox's store programs (L{trackermail.store.outbox}) on SQLite and
PostgreSQL: bodies in chunks, claims and leases, group commits, and what
operators see and do.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.stores import make_memory_store, make_pg_store, make_sqlite_store
from trackermail.store import schema
from trackermail.store.outbox import (
    CHUNK_SIZE,
    Result,
    claim_due,
    enqueue,
    next_wakeup,
    outbox_body,
    purge_finished,
    read_body,
    record_results,
    release_claims,
    renew_claims,
)
from trackermail.store.outbox_report import (
    delivery_rows,
    message_counts,
    outbox_report,
    outbox_summary,
    requeue_deliveries,
)
from trackermail.store.sql import Exec, Rows, Value

T0 = 1_000_000.0
LINE = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eius.\r\n"


class Source:
    """A L{BodySource} handing out a body in pieces of C{piece} bytes."""

    def __init__(self, data: bytes, piece: int = 300 * 1024, fail_at: int | None = None):
        self.data = data
        self.piece = piece
        self.fail_at = fail_at
        self.calls = 0

    def chunks(self, size):
        self.calls += 1
        for start in range(0, len(self.data), self.piece):
            if self.fail_at is not None and start >= self.fail_at:
                raise OSError(5, "Input/output error")
            yield self.data[start:start + self.piece]


def big_body(size: int) -> bytes:
    head = b"Subject: big\r\n\r\n"
    return head + LINE * ((size - len(head)) // len(LINE))


class OutboxStoreMixin:
    async def make_store(self):
        raise NotImplementedError

    async def setUp(self):
        self.store = await self.make_store()

    async def go(self, program, *args):
        return await self.store.run(program, *args)

    async def chunks(self, mid):
        return await self.go(lambda: (yield Rows(
            "SELECT seq, data FROM outbox_chunks WHERE message_id = ? ORDER BY seq", (mid,))))

    async def test_small_body_is_one_row(self):
        """A message of a few KiB is stored in one row, without chunks."""
        body = big_body(4096)
        mid = await self.go(enqueue, body, [("a@x.example", "s")], T0)
        self.assertEqual(await self.chunks(mid), [])
        self.assertEqual(await self.go(read_body, mid), (body,))
        size = await self.go(lambda: (yield Value(
            "SELECT size FROM outbox_messages WHERE id = ?", (mid,))))
        self.assertEqual(size, len(body))

    async def test_big_body_is_cut_after_line_ends(self):
        """A 3.5 MiB body is stored in chunks of at most 1 MiB, each ending after a line end."""
        body = big_body(3 * CHUNK_SIZE + CHUNK_SIZE // 2)
        mid = await self.go(enqueue, body, [("a@x.example", "s")], T0)
        parts = await self.go(read_body, mid)
        self.assertEqual(len(parts), 4)
        self.assertEqual(b"".join(parts), body)
        self.assertTrue(all(len(p) <= CHUNK_SIZE and p.endswith(b"\n") for p in parts))
        self.assertEqual([seq for seq, _ in await self.chunks(mid)], [1, 2, 3])

    async def test_body_source(self):
        """A body source is read piece by piece and stored like the same bytes would be."""
        body = big_body(2 * CHUNK_SIZE + 1000)
        source = Source(body)
        mid = await self.go(enqueue, source, [("a@x.example", "s"), ("b@y.example", "s")], T0)
        parts = await self.go(read_body, mid)
        self.assertEqual(b"".join(parts), body)
        self.assertEqual([len(p) for p in parts],
                         [len(p) for p in await self.go(read_body, await self.go(
                             enqueue, body, [("c@z.example", "s")], T0))])
        self.assertEqual(source.calls, 1)

    async def test_body_source_that_fails(self):
        """A source that cannot be read fails the transaction: nothing is stored."""
        source = Source(big_body(3 * CHUNK_SIZE), fail_at=CHUNK_SIZE * 2)
        with self.assertRaises(OSError):
            await self.go(enqueue, source, [("a@x.example", "s")], T0)
        self.assertEqual(await self.go(delivery_rows), [])
        count = await self.go(lambda: (yield Value("SELECT COUNT(*) FROM outbox_messages")))
        self.assertEqual(count, 0)

    async def test_line_longer_than_a_chunk(self):
        """A line longer than a chunk is cut where the chunk ends, and read back whole."""
        body = b"Subject: x\r\n\r\n" + b"z" * (CHUNK_SIZE + 10) + b"\r\nend\r\n"
        mid = await self.go(enqueue, Source(body, piece=4096), [("a@x.example", "s")], T0)
        self.assertEqual(await self.go(outbox_body, mid), body)

    async def test_empty_body(self):
        """An empty body is stored and read back as empty."""
        mid = await self.go(enqueue, Source(b""), [("a@x.example", "s")], T0)
        self.assertEqual(await self.go(outbox_body, mid), b"")

    async def test_missing_or_incomplete_body(self):
        """A body that is gone, or whose chunks are not all there, reads as None."""
        mid = await self.go(enqueue, big_body(2 * CHUNK_SIZE), [("a@x.example", "s")], T0)
        self.assertIsNone(await self.go(read_body, mid + 1000))
        await self.go(lambda: (yield Exec("DELETE FROM outbox_chunks WHERE seq = 1")))
        self.assertIsNone(await self.go(read_body, mid))

    async def test_claims(self):
        """Claims carry the body size; a node never re-takes its own expired claims, others do."""
        mid = await self.go(enqueue, b"Subject: x\n\nx\n", [("a@x.example", "s"),
                                                               ("b@y.example", "s")], T0)
        claimed = await self.go(claim_due, self.store.dialect, "n1", T0, 1, 30)
        self.assertEqual([(d.recipient, d.size, d.attempts) for d in claimed],
                         [("a@x.example", 14, 1)])
        self.assertEqual(claimed[0].message_id, mid)
        self.assertEqual(await self.go(next_wakeup, "n2"), T0)
        late = T0 + 31
        again = await self.go(claim_due, self.store.dialect, "n1", late, 10, 30)
        self.assertEqual([d.recipient for d in again], ["b@y.example"])
        self.assertEqual(await self.go(next_wakeup, "n2"), T0 + 30)
        taken = await self.go(claim_due, self.store.dialect, "n2", late, 10, 30)
        self.assertEqual([(d.recipient, d.attempts) for d in taken], [("a@x.example", 2)])

    async def test_claim_past_a_cursor(self):
        """
        A claim past (due, id) skips what comes before; without the cursor a
        claim starts from the beginning (and finds copies put back early);
        taking over other nodes' expired leases can be left out.
        """
        await self.go(enqueue, b"x\n", [(f"u{i}@x.example", "s") for i in range(4)], T0)
        first = await self.go(claim_due, self.store.dialect, "n1", T0, 2, 30)
        self.assertEqual([d.recipient for d in first], ["u0@x.example", "u1@x.example"])
        cursor = max((d.due, d.id) for d in first)
        self.assertEqual(cursor[0], T0)
        await self.go(release_claims, "n1")
        past = await self.go(claim_due, self.store.dialect, "n1", T0, 10, 30, cursor)
        self.assertEqual([d.recipient for d in past], ["u2@x.example", "u3@x.example"])
        again = await self.go(claim_due, self.store.dialect, "n1", T0, 10, 30)
        self.assertEqual([d.recipient for d in again], ["u0@x.example", "u1@x.example"])
        late = T0 + 31
        self.assertEqual(await self.go(claim_due, self.store.dialect, "n2", late, 10, 30,
                                       None, False), [])
        taken = await self.go(claim_due, self.store.dialect, "n2", late, 10, 30)
        self.assertEqual(len(taken), 4)

    async def test_renew_and_release(self):
        """A node renews all its leases at once, and releases all its claims at start."""
        await self.go(enqueue, b"x\n", [("a@x.example", "s"), ("b@y.example", "s")], T0)
        await self.go(claim_due, self.store.dialect, "n1", T0, 1, 30)
        await self.go(claim_due, self.store.dialect, "n2", T0, 1, 30)
        self.assertEqual(await self.go(renew_claims, "n1", T0 + 100, T0 + 20), 0)
        self.assertEqual(await self.go(renew_claims, "n1", T0 + 100, T0 + 31), 1)
        rows = await self.go(lambda: (yield Rows(
            "SELECT claimed_by, claimed_until FROM outbox_deliveries ORDER BY id")))
        self.assertEqual([tuple(r) for r in rows], [("n1", T0 + 100), ("n2", T0 + 30)])
        self.assertEqual(await self.go(release_claims, "n1"), 1)
        self.assertEqual([r[2:4] for r in await self.go(delivery_rows)],
                         [("queued", 1), ("sending", 1)])

    async def test_record_results(self):
        """A group commit records each kind of result; results for claims no longer ours are refused."""
        mid = await self.go(enqueue, b"x\n", [(f"u{i}@x.example", "s") for i in range(5)], T0)
        d = await self.go(claim_due, self.store.dialect, "n1", T0, 5, 30)
        await self.go(lambda: (yield Exec(
            "UPDATE outbox_deliveries SET claimed_by = 'n2' WHERE id = ?", (d[4].id,))))
        seen = []

        def hook(rcpt, sender, code, text, now):
            seen.append((rcpt, code, text))
            return "counted"
            yield

        done = await self.go(record_results, "n1", T0 + 1, [
            Result(d[0], "sent", 250),
            Result(d[1], "queued", 451, "4.3.0 later", T0 + 61),
            Result(d[2], "failed", 550, "5.1.1 unknown", bounce=True),
            Result(d[3], "released"),
            Result(d[4], "sent", 250),
        ], hook)
        self.assertEqual((done.sent, done.retried, done.failed, done.released, done.lost),
                         (1, 1, 1, 1, 1))
        self.assertEqual(done.bounced, ["counted"])
        self.assertEqual(seen, [("u2@x.example", 550, "5.1.1 unknown")])
        # The sent copy is gone; its message counts it.
        self.assertEqual([r[:1] + r[2:6] for r in await self.go(delivery_rows)], [
            ("u1@x.example", "queued", 1, 451, "4.3.0 later"),
            ("u2@x.example", "failed", 1, 550, "5.1.1 unknown"),
            ("u3@x.example", "queued", 0, None, None),
            ("u4@x.example", "sending", 1, None, None)])
        [counts] = await self.go(message_counts)
        self.assertEqual((counts.id, counts.sent, counts.last_sent, counts.left),
                         (mid, 1, T0 + 1, {"queued": 2, "failed": 1, "sending": 1}))

    async def test_sent_copies_are_counted_per_message(self):
        """Sent copies of several messages in one commit are counted on each message; a copy is counted once."""
        fanout = await self.go(enqueue, b"x\n", [(f"u{i}@x.example", "s") for i in range(3)], T0)
        single = [await self.go(enqueue, b"y\n", [(f"v{i}@y.example", "s")], T0)
                  for i in range(2)]
        d = await self.go(claim_due, self.store.dialect, "n1", T0, 10, 30)
        self.assertEqual(len(d), 5)
        done = await self.go(record_results, "n1", T0 + 2,
                             [Result(x, "sent", 250) for x in d[:4]], None)
        self.assertEqual((done.sent, done.lost), (4, 0))
        # The same results again (a commit retried after its answer was
        # lost): their deliveries are gone, nothing is counted twice.
        again = await self.go(record_results, "n1", T0 + 3,
                              [Result(x, "sent", 250) for x in d[:4]], None)
        self.assertEqual((again.sent, again.lost), (0, 4))
        done = await self.go(record_results, "n1", T0 + 4, [Result(d[4], "sent", 250)], None)
        self.assertEqual(done.sent, 1)
        self.assertEqual([(c.id, c.sent, c.last_sent, c.left)
                          for c in await self.go(message_counts)],
                         [(fanout, 3, T0 + 2, {}), (single[0], 1, T0 + 2, {}),
                          (single[1], 1, T0 + 4, {})])
        self.assertEqual(await self.go(delivery_rows), [])
        summary = await self.go(outbox_summary, T0 + 5)
        self.assertEqual((summary.queued, summary.sending, summary.sent, summary.failed),
                         (0, 0, 5, 0))
        [only] = await self.go(message_counts, single[1])
        self.assertEqual((only.id, only.sent), (single[1], 1))

    async def test_purge(self):
        """A message goes a day after its last copy was sent, not a day after it was made; failed ones stay."""
        late = await self.go(enqueue, b"x\n", [("a@x.example", "s"), ("b@x.example", "s")], T0)
        failing = await self.go(enqueue, b"y\n", [("c@x.example", "s"), ("d@x.example", "s")],
                                T0)
        d = await self.go(claim_due, self.store.dialect, "n1", T0, 10, 30)
        await self.go(record_results, "n1", T0 + 10, [
            Result(d[0], "sent", 250), Result(d[1], "queued", 451, "later", T0 + 7200),
            Result(d[2], "sent", 250), Result(d[3], "failed", 550, "no")], None)
        d = await self.go(claim_due, self.store.dialect, "n1", T0 + 7200, 10, 30)
        await self.go(record_results, "n1", T0 + 7200, [Result(d[0], "sent", 250)], None)
        await self.go(purge_finished, T0 + 3600)
        self.assertEqual([(c.id, c.sent) for c in await self.go(message_counts)],
                         [(late, 2), (failing, 1)])
        await self.go(purge_finished, T0 + 7201)
        self.assertEqual([(c.id, c.sent, c.left) for c in await self.go(message_counts)],
                         [(failing, 1, {"failed": 1})])
        self.assertIsNone(await self.go(read_body, late))
        self.assertEqual(await self.go(outbox_body, failing), b"y\n")

    async def test_requeue(self):
        """requeue makes deferred deliveries due now and, asked to, failed ones queued again."""
        await self.go(enqueue, b"x\n", [(f"u{i}@x.example", "s") for i in range(4)], T0)
        d = await self.go(claim_due, self.store.dialect, "n1", T0, 4, 30)
        await self.go(record_results, "n1", T0, [
            Result(d[0], "queued", 451, "4.3.0 later", T0 + 600),
            Result(d[1], "queued", 451, "4.3.0 later", T0 + 600),
            Result(d[2], "failed", 550, "gave up"),
            Result(d[3], "sent", 250),
        ], None)
        self.assertEqual(await self.go(requeue_deliveries, T0 + 5, [d[1].id, d[3].id]),
                         [d[1].id])
        self.assertEqual(await self.go(requeue_deliveries, T0 + 5), [d[0].id])
        self.assertEqual(await self.go(requeue_deliveries, T0 + 5, None, True), [d[2].id])
        rows = await self.go(delivery_rows)
        self.assertEqual([r[2:4] for r in rows], [("queued", 1), ("queued", 1), ("queued", 0)])
        self.assertEqual([c.sent for c in await self.go(message_counts)], [1])
        due = await self.go(claim_due, self.store.dialect, "n1", T0 + 5, 10, 30)
        self.assertEqual(len(due), 3)

    async def test_report(self):
        """The report shows claims by node, deliveries in flight, errors grouped without addresses."""
        await self.go(enqueue, b"x\n", [(f"u{i}@x.example", "s") for i in range(6)], T0)
        d = await self.go(claim_due, self.store.dialect, "n1", T0, 4, 30)
        await self.go(claim_due, self.store.dialect, "n2", T0 + 5, 1, 30)
        await self.go(record_results, "n1", T0, [
            Result(d[0], "queued", 554, "5.7.1 <u0@x.example>: Relay access denied", T0 + 60),
            Result(d[1], "queued", 554, "5.7.1 <u1@x.example>: Relay access denied", T0 + 120),
            Result(d[2], "queued", 421, "4.4.1 cannot connect", T0 + 60),
        ], None)
        report = await self.go(outbox_report, T0 + 10)
        self.assertEqual((report.summary.queued, report.summary.sending, report.due), (4, 2, 1))
        self.assertEqual([(c.node, c.count, c.first_expiry) for c in report.claims],
                         [("n1", 1, T0 + 30), ("n2", 1, T0 + 35)])
        self.assertEqual([(f.recipient, f.node) for f in report.in_flight],
                         [("u3@x.example", "n1"), ("u4@x.example", "n2")])
        self.assertEqual([(g.code, g.error, g.count, g.next_attempt) for g in report.deferred], [
            (554, "5.7.1 <...>: Relay access denied", 2, T0 + 60),
            (421, "4.4.1 cannot connect", 1, T0 + 60)])


class SQLiteOutboxStoreTests(OutboxStoreMixin, TestCase):
    async def make_store(self):
        return await make_sqlite_store(self)


class PostgresOutboxStoreTests(OutboxStoreMixin, TestCase):
    timeout = 60

    async def make_store(self):
        return await make_pg_store(self)


class MigrationTests(SynchronousTestCase):
    def test_existing_bodies_get_their_size(self):
        """Bodies stored before chunks existed keep working: their size is filled in."""
        store = make_memory_store()
        self.addCleanup(store.close)
        # make_memory_store migrated everything: undo migration 3.
        conn = store._conn
        conn.execute("DROP TABLE outbox_chunks")
        conn.execute("ALTER TABLE outbox_messages DROP COLUMN size")
        conn.execute("DELETE FROM schema_version WHERE version = 3")
        conn.execute("INSERT INTO outbox_messages (body, created) VALUES (?, ?)",
                     (b"Subject: old\r\n\r\nold\r\n", T0))
        self.assertEqual(self.successResultOf(store.migrate()), schema.latest_version())
        self.assertEqual(self.successResultOf(store.run(read_body, 1)),
                         (b"Subject: old\r\n\r\nold\r\n",))


def migrate_to(dialect: str, version: int):
    """Store program: the schema as it was at C{version} (migrations up to it only)."""
    yield Exec("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for number, sql in schema.migrations():
        if number > version:
            break
        for statement in schema.statements(sql, dialect):
            yield Exec(statement)
        yield Exec("INSERT INTO schema_version (version) VALUES (?)", (number,))


def old_outbox():
    """
    Store program, on the schema of version 6: a fan-out with two copies
    sent (the last at T0 + 20), one queued and one failed; a message all
    sent; one with nothing sent. Fires with their ids.
    """
    ids = []
    for body, rows in ((b"fan-out\n", [("sent", T0 + 10), ("sent", T0 + 20), ("queued", None),
                                       ("failed", T0 + 30)]),
                       (b"done\n", [("sent", T0 + 5)]),
                       (b"waiting\n", [("queued", None)])):
        mid = yield Value("INSERT INTO outbox_messages (body, size, created, origin) "
                          "VALUES (?, ?, ?, 'Q1') RETURNING id", (body, len(body), T0))
        ids.append(mid)
        for n, (state, finished) in enumerate(rows):
            yield Exec(
                "INSERT INTO outbox_deliveries (message_id, recipient, sender, state, "
                "attempts, next_attempt, created, finished, last_code) "
                "VALUES (?, ?, 's', ?, 1, ?, ?, ?, ?)",
                (mid, f"u{n}@x.example", state, T0, T0, finished,
                 {"sent": 250, "failed": 550}.get(state)))
    return ids


class SentCountsMigrationMixin:
    """Migration 7 on a database with sent deliveries in it."""

    async def make_store(self):
        raise NotImplementedError

    async def test_sent_deliveries_become_counts(self):
        """Sent deliveries become their message's count and last time; the others stay as they were."""
        store = await self.make_store()
        await store.run(migrate_to, store.dialect, 6)
        fanout, done, waiting = await store.run(old_outbox)
        self.assertEqual(await store.migrate(), schema.latest_version())
        self.assertEqual([(c.id, c.sent, c.last_sent, c.left)
                          for c in await store.run(message_counts)],
                         [(fanout, 2, T0 + 20, {"queued": 1, "failed": 1}),
                          (done, 1, T0 + 5, {}),
                          (waiting, 0, None, {"queued": 1})])
        self.assertEqual([r[:4] for r in await store.run(delivery_rows)],
                         [("u2@x.example", "s", "queued", 1),
                          ("u3@x.example", "s", "failed", 1),
                          ("u0@x.example", "s", "queued", 1)])
        summary = await store.run(outbox_summary, T0)
        self.assertEqual((summary.queued, summary.sent, summary.failed), (2, 3, 1))
        # The queued deliveries are still claimed and sent as before.
        claimed = await store.run(claim_due, store.dialect, "n1", T0 + 1, 10, 30)
        self.assertEqual([d.message_id for d in claimed], [fanout, waiting])
        await store.run(record_results, "n1", T0 + 40,
                        [Result(d, "sent", 250) for d in claimed], None)
        self.assertEqual([(c.sent, c.left) for c in await store.run(message_counts)],
                         [(3, {"failed": 1}), (1, {}), (1, {})])


class SQLiteSentCountsMigrationTests(SentCountsMigrationMixin, TestCase):
    async def make_store(self):
        return await make_sqlite_store(self, migrate=False)


class PostgresSentCountsMigrationTests(SentCountsMigrationMixin, TestCase):
    timeout = 60

    async def make_store(self):
        return await make_pg_store(self, migrate=False)
