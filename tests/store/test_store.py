"""
The store contract, run against every backend: in-memory SQLite, an SQLite
file through adbapi, and PostgreSQL through txpostgres.
"""

from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tests.support.stores import make_memory_store, make_pg_store, make_sqlite_store
from trackermail.errors import (
    AlreadyExists,
    InvalidValue,
    UnknownKeyword,
    UnknownPackage,
    UnknownTeam,
)
from trackermail.store import schema
from trackermail.store.bounce_stats import (
    bounce_stats,
    record_bounce,
    record_sent,
    trim_all_bounce_stats,
)
from trackermail.store.confirmations import (
    count_confirmation_send,
    create_confirmation,
    purge_confirmations,
    take_confirmation,
)
from trackermail.store.interface import IStore
from trackermail.store.keywords import default_keywords, keywords, set_default_keywords
from trackermail.store.ledger import is_processed, mark_processed, stats
from trackermail.store.news import add_news, news
from trackermail.store.outbox import enqueue, outbox_body, read_small_bodies
from trackermail.store.outbox_report import delivery_rows, outbox_summary
from trackermail.store.packages import add_package, import_sources, resolve_package
from trackermail.store.schema import current_version
from trackermail.store.sql import Exec, Later, Many, Notify, Rows, Value
from trackermail.store.subscriptions import (
    dump_subscribers,
    recipients_for,
    set_subscription_keywords,
    subscribe,
    subscribers_for,
    subscribers_of,
    subscription_keywords,
    subscriptions_of,
    unsubscribe,
    unsubscribe_all,
)
from trackermail.store.teams import (
    add_team,
    join_team,
    leave_team,
    set_membership_keywords,
    set_membership_muted,
    team_add_package,
    team_packages,
    teams_of,
)

DEFAULTS = frozenset(
    {"default", "bts", "bts-control", "summary", "upload-source", "archive", "contact", "build"}
)


def record_queries(case) -> list[bytes]:
    """Every query text txpostgres cursors send from now on (as bytes), in order."""
    from txpostgres import txpostgres

    sent: list[bytes] = []
    execute = txpostgres.Cursor.execute

    def recording(cursor, query, params=None):
        sent.append(query if isinstance(query, bytes) else query.encode())
        return execute(cursor, query, params)

    case.patch(txpostgres.Cursor, "execute", recording)
    return sent


class StoreContractMixin:
    """
    Tests every backend must pass; subclasses define C{make_store}.
    """

    async def make_store(self):
        raise NotImplementedError

    async def setUp(self):
        self.store = await self.make_store()

    def test_provides_interface(self):
        """The store provides IStore."""
        self.assertTrue(verifyObject(IStore, self.store))

    async def test_migrate_is_idempotent(self):
        """Migrating twice keeps the schema at the latest version."""
        first = await self.store.migrate()
        second = await self.store.migrate()
        self.assertEqual(first, schema.latest_version())
        self.assertEqual(second, schema.latest_version())
        self.assertEqual(await self.store.run(current_version, self.store.dialect), schema.latest_version())

    async def test_keyword_seed(self):
        """The keywords distro-tracker knows are there with their default flags."""
        kws = {k.name: k for k in await self.store.run(keywords)}
        self.assertEqual(len(kws), 13)
        self.assertEqual({n for n, k in kws.items() if k.is_default}, DEFAULTS)
        self.assertEqual(kws["vcs"].description,
                         "Commit notices of the VCS repository associated to the package")

    async def test_email_identity_is_case_insensitive(self):
        """Foo@Example.org and foo@example.org are one subscriber."""
        self.assertTrue(await self.store.run(subscribe, "Foo@Example.org", "dpkg"))
        self.assertFalse(await self.store.run(subscribe, "foo@example.org", "dpkg"))
        self.assertEqual(await self.store.run(subscribers_of, "dpkg"), ["Foo@Example.org"])
        self.assertEqual(await self.store.run(subscriptions_of, "FOO@EXAMPLE.ORG"), ["dpkg"])

    async def test_bad_values_are_refused(self):
        """Malformed emails and package names are refused with a clear error."""
        with self.assertRaises(InvalidValue) as e:
            await self.store.run(subscribe, "a@b.c\nBcc: x@y.z", "dpkg")
        self.assertIn("is not a valid email address", str(e.exception))
        self.assertNotIn("\n", str(e.exception))
        with self.assertRaises(InvalidValue) as e:
            await self.store.run(subscribe, "a@example.org", "Bad_Name")
        self.assertEqual(str(e.exception), '"Bad_Name" is not a valid package name')

    async def test_unsubscribe(self):
        """Unsubscribing removes only that subscription and says whether it existed."""
        await self.store.run(subscribe, "a@example.org", "dpkg")
        await self.store.run(subscribe, "a@example.org", "apt")
        self.assertTrue(await self.store.run(unsubscribe, "A@example.org", "dpkg"))
        self.assertFalse(await self.store.run(unsubscribe, "a@example.org", "dpkg"))
        self.assertEqual(await self.store.run(subscriptions_of, "a@example.org"), ["apt"])
        self.assertEqual(await self.store.run(unsubscribe_all, "a@example.org"), ["apt"])
        self.assertEqual(await self.store.run(subscriptions_of, "a@example.org"), [])

    async def test_resolve_package(self):
        """A name resolves to a source, a binary's source, a pseudo package, or unknown."""
        await self.store.run(add_package, "coreutils", binaries=["coreutils", "coreutils-from"])
        await self.store.run(add_package, "general", kind="pseudo")
        r = await self.store.run(resolve_package, "coreutils-from")
        self.assertEqual((r.kind, r.source), ("binary", "coreutils"))
        self.assertEqual((await self.store.run(resolve_package, "coreutils")).kind, "source")
        self.assertEqual((await self.store.run(resolve_package, "general")).kind, "pseudo")
        self.assertEqual((await self.store.run(resolve_package, "nothere")).kind, "unknown")
        await self.store.run(subscribe, "a@example.org", "nothere")
        self.assertEqual((await self.store.run(resolve_package, "nothere")).kind, "other")

    async def test_import_sources(self):
        """A bulk import creates sources and binary mappings, idempotently."""
        entries = [(f"src{i}", [f"bin{i}", f"bin{i}-dev"]) for i in range(1500)]
        self.assertEqual(await self.store.run(import_sources, entries), (1500, 3000))
        self.assertEqual(await self.store.run(import_sources, entries), (1500, 3000))
        counts = await self.store.run(stats)
        self.assertEqual((counts.packages, counts.binaries), (1500, 3000))
        r = await self.store.run(resolve_package, "bin1499-dev")
        self.assertEqual(r.source, "src1499")

    async def test_default_keywords(self):
        """A user's default set starts as the default keywords and can be edited."""
        self.assertEqual(await self.store.run(default_keywords, "a@example.org"), DEFAULTS)
        new = await self.store.run(set_default_keywords, "a@example.org", "+", ["vcs"])
        self.assertEqual(new, DEFAULTS | {"vcs"})
        new = await self.store.run(set_default_keywords, "a@example.org", "-", ["bts", "vcs"])
        self.assertEqual(new, DEFAULTS - {"bts"})
        new = await self.store.run(set_default_keywords, "a@example.org", "=", ["vcs"])
        self.assertEqual(await self.store.run(default_keywords, "A@EXAMPLE.ORG"), {"vcs"})
        with self.assertRaises(UnknownKeyword):
            await self.store.run(set_default_keywords, "a@example.org", "+", ["nope"])

    async def test_subscription_keywords_follow_defaults_until_edited(self):
        """A subscription uses the user's default set until its own set is edited."""
        await self.store.run(subscribe, "a@example.org", "dpkg")
        self.assertEqual(await self.store.run(subscription_keywords, "a@example.org", "dpkg"),
                         DEFAULTS)
        await self.store.run(set_default_keywords, "a@example.org", "+", ["vcs"])
        self.assertIn("vcs", await self.store.run(subscription_keywords, "a@example.org", "dpkg"))
        await self.store.run(set_subscription_keywords, "a@example.org", "dpkg", "=", ["bts"])
        await self.store.run(set_default_keywords, "a@example.org", "+", ["translation"])
        self.assertEqual(await self.store.run(subscription_keywords, "a@example.org", "dpkg"),
                         {"bts"})

    async def test_subscribers_for_keywords(self):
        """Only subscribers whose effective set has the keyword get the mail."""
        await self.store.run(subscribe, "plain@example.org", "dpkg")
        await self.store.run(subscribe, "vcsfan@example.org", "dpkg")
        await self.store.run(set_subscription_keywords, "vcsfan@example.org", "dpkg", "=", ["vcs"])
        await self.store.run(subscribe, "inactive@example.org", "dpkg", active=False)
        self.assertEqual(await self.store.run(subscribers_for, "dpkg", "bts"), ["plain@example.org"])
        self.assertEqual(await self.store.run(subscribers_for, "dpkg", "vcs"),
                         ["vcsfan@example.org"])
        self.assertEqual(await self.store.run(subscribers_for, "dpkg", "nokeyword"), [])
        self.assertEqual(await self.store.run(subscribers_for, "nopackage", "bts"), [])

    async def test_team_members_get_package_mail_once(self):
        """Team members get a team package's mail; muted ones do not; nobody twice."""
        await self.store.run(add_package, "dpkg")
        await self.store.run(add_team, "dpkg-team", "dpkg maintainers", "owner@example.org")
        await self.store.run(team_add_package, "dpkg-team", "dpkg")
        await self.store.run(join_team, "dpkg-team", "member@example.org")
        await self.store.run(join_team, "dpkg-team", "both@example.org")
        await self.store.run(join_team, "dpkg-team", "muted@example.org")
        await self.store.run(subscribe, "both@example.org", "dpkg")
        await self.store.run(set_membership_muted, "dpkg-team", "muted@example.org", True)
        direct, team = await self.store.run(recipients_for, "dpkg", "bts")
        self.assertEqual(direct, ["both@example.org"])
        self.assertEqual(team, [("member@example.org", "dpkg-team"),
                                ("owner@example.org", "dpkg-team")])
        await self.store.run(set_membership_keywords, "dpkg-team", "member@example.org",
                             ["vcs"], "dpkg")
        self.assertEqual(await self.store.run(subscribers_for, "dpkg", "bts"),
                         ["both@example.org", "owner@example.org"])
        self.assertEqual(await self.store.run(subscribers_for, "dpkg", "vcs"),
                         ["member@example.org"])

    async def test_teams(self):
        """Teams list their packages and members; unknown teams are an error."""
        await self.store.run(add_package, "apt")
        await self.store.run(add_team, "apt-team", "APT", "o@example.org", public=False)
        with self.assertRaises(AlreadyExists):
            await self.store.run(add_team, "apt-team", "APT", "o@example.org")
        await self.store.run(team_add_package, "apt-team", "apt")
        with self.assertRaises(UnknownPackage):
            await self.store.run(team_add_package, "apt-team", "nope")
        self.assertEqual(await self.store.run(team_packages, "apt-team"), ["apt"])
        self.assertTrue(await self.store.run(join_team, "apt-team", "m@example.org"))
        self.assertFalse(await self.store.run(join_team, "apt-team", "M@example.org"))
        teams = await self.store.run(teams_of, "m@example.org")
        self.assertEqual([(t.slug, t.public, t.owner) for t in teams],
                         [("apt-team", False, "o@example.org")])
        self.assertTrue(await self.store.run(leave_team, "apt-team", "m@example.org"))
        self.assertEqual(await self.store.run(teams_of, "m@example.org"), [])
        with self.assertRaises(UnknownTeam):
            await self.store.run(join_team, "nope", "m@example.org")

    async def test_dump_subscribers(self):
        """dump-subscribers gives package -> emails, like distro-tracker's JSON dump."""
        await self.store.run(subscribe, "b@example.org", "dpkg")
        await self.store.run(subscribe, "a@example.org", "dpkg")
        await self.store.run(subscribe, "a@example.org", "apt")
        self.assertEqual(await self.store.run(dump_subscribers),
                         {"apt": ["a@example.org"], "dpkg": ["a@example.org", "b@example.org"]})
        self.assertEqual(await self.store.run(dump_subscribers, ["apt"]), {"apt": ["a@example.org"]})
        with self.assertRaises(UnknownPackage):
            await self.store.run(dump_subscribers, ["nope"])

    async def test_confirmations_are_single_use_and_expire(self):
        """A confirmation key works once, and not after it expired."""
        await self.store.run(create_confirmation, "k1", "A@example.org",
                             [["subscribe", "dpkg", "a@example.org"]], 1000.0)
        self.assertEqual(await self.store.run(take_confirmation, "k1", 1001.0, 100.0),
                         ("a@example.org", [["subscribe", "dpkg", "a@example.org"]]))
        self.assertEqual(await self.store.run(take_confirmation, "k1", 1002.0, 100.0),
                         "used")
        await self.store.run(create_confirmation, "k2", "a@example.org", [], 1000.0)
        self.assertEqual(await self.store.run(take_confirmation, "k2", 1100.0, 100.0),
                         "expired")
        self.assertEqual(await self.store.run(take_confirmation, "zz", 1000.0, 100.0),
                         "unknown")

    async def test_confirmation_send_limit(self):
        """At most the limit of confirmation mails go to one address per day."""
        results = [await self.store.run(count_confirmation_send, "a@example.org",
                                        "2026-11-21", 3) for _ in range(4)]
        self.assertEqual(results, [True, True, True, False])
        self.assertTrue(await self.store.run(count_confirmation_send, "a@example.org",
                                             "2026-11-22", 3))

    async def test_bounce_stats(self):
        """Sent and bounced mails are counted per address and day."""
        await self.store.run(subscribe, "a@example.org", "dpkg")
        await self.store.run(record_sent, ["a@example.org", "A@example.org"], "2026-11-20")
        await self.store.run(record_sent, ["a@example.org"], "2026-11-20")
        await self.store.run(record_bounce, "a@example.org", "2026-11-20")
        await self.store.run(record_bounce, "a@example.org", "2026-11-21", hard=False)
        stats = await self.store.run(bounce_stats, "a@example.org")
        self.assertEqual([(s.day, s.sent, s.bounced) for s in stats],
                         [("2026-11-21", 0, 0), ("2026-11-20", 2, 1)])

    async def test_enqueue_stores_body_once(self):
        """A fan-out stores its body once and a queued delivery per recipient."""
        seen = []
        await self.store.listen("outbox", lambda: seen.append(1))
        mid = await self.store.run(enqueue, b"Subject: x\r\n\r\nbody\xff\r\n",
                                       [("a@example.org", "bounces+1@t.example"),
                                        ("b@example.org", "bounces+2@t.example")], 10.0)
        self.assertEqual(await self.store.run(outbox_body, mid),
                         b"Subject: x\r\n\r\nbody\xff\r\n")
        rows = await self.store.run(delivery_rows, mid)
        self.assertEqual([r[:3] for r in rows],
                         [("a@example.org", "bounces+1@t.example", "queued"),
                          ("b@example.org", "bounces+2@t.example", "queued")])
        summary = await self.store.run(outbox_summary, 20.0)
        self.assertEqual((summary.queued, summary.oldest_due), (2, 10.0))
        count = await self.store.run(lambda: (yield Value(
            "SELECT COUNT(*) FROM outbox_messages")))
        self.assertEqual(count, 1)

    async def test_later_statement_is_seen_by_the_next(self):
        """A Later write is in place for the statement after it, and committed."""
        def program():
            yield Later("INSERT INTO packages (name, kind) VALUES (?, ?)", ("later", "source"))
            return (yield Value("SELECT kind FROM packages WHERE name = ?", ("later",)))

        self.assertEqual(await self.store.run(program), "source")
        kind = await self.store.run(lambda: (yield Value(
            "SELECT kind FROM packages WHERE name = 'later'")))
        self.assertEqual(kind, "source")

    async def test_failing_later_statement_fails_the_transaction(self):
        """
        A Later write that breaks a constraint fails the whole transaction,
        even when nothing after it waits for an answer: nothing is committed.
        """
        await self.store.run(lambda: (yield Exec(
            "INSERT INTO packages (name, kind) VALUES ('dup', 'source')")))

        def program():
            yield Exec("INSERT INTO packages (name, kind) VALUES ('first', 'source')")
            yield Later("INSERT INTO packages (name, kind) VALUES ('dup', 'source')")
            yield Notify("outbox")

        with self.assertRaises(Exception):
            await self.store.run(program)
        names = await self.store.run(lambda: (yield Rows(
            "SELECT name FROM packages WHERE name IN ('first', 'dup') ORDER BY name")))
        self.assertEqual([r[0] for r in names], ["dup"])

    async def test_program_error_discards_queued_writes(self):
        """A program that raises after queuing writes commits none of them."""
        def program():
            yield Later("INSERT INTO packages (name, kind) VALUES ('queued', 'source')")
            yield Many("INSERT INTO packages (name, kind) VALUES (?, ?)",
                       [("many1", "source"), ("many2", "source")])
            raise InvalidValue("changed my mind")

        with self.assertRaises(InvalidValue):
            await self.store.run(program)
        count = await self.store.run(lambda: (yield Value(
            "SELECT COUNT(*) FROM packages WHERE name IN ('queued', 'many1', 'many2')")))
        self.assertEqual(count, 0)

    async def test_read_small_bodies(self):
        """
        Bodies stored in one chunk are read together, by id; a body in
        several chunks and an id with no message are left out.
        """
        small = b"Subject: a\r\n\r\nsmall\r\n"
        line = b"0123456789" * 10 + b"\r\n"
        big = b"Subject: b\r\n\r\n" + line * (1024 * 1024 // len(line) + 10)
        a = await self.store.run(enqueue, small, [("a@example.org", "")], 1.0)
        b = await self.store.run(enqueue, big, [("b@example.org", "")], 1.0)
        c = await self.store.run(enqueue, small + b"more\r\n", [("c@example.org", "")], 1.0)
        found = await self.store.run(read_small_bodies, [a, b, c, 999999])
        self.assertEqual(found, {a: (small,), c: (small + b"more\r\n",)})

    async def test_processed_ledger(self):
        """A digest is recorded once; recording it again says it was already there."""
        self.assertFalse(await self.store.run(is_processed, "abc"))
        self.assertTrue(await self.store.run(mark_processed, "abc", 1.0, "control"))
        self.assertFalse(await self.store.run(mark_processed, "abc", 2.0, "control"))
        self.assertTrue(await self.store.run(is_processed, "abc"))

    async def test_failed_program_rolls_back(self):
        """A program that fails half-way leaves nothing behind."""

        def half():
            yield from subscribe("a@example.org", "dpkg")
            raise UnknownTeam("boom")

        with self.assertRaises(UnknownTeam):
            await self.store.run(half)
        self.assertEqual(await self.store.run(subscribers_of, "dpkg"), [])

    async def test_news(self):
        """News items are stored with their raw content and listed newest first."""
        await self.store.run(add_news, "dpkg", "Accepted dpkg 1.0", b"raw\xff",
                             "message/rfc822", "Jane <j@example.org>", 5.0, True)
        await self.store.run(add_news, "dpkg", "Second", b"x", "message/rfc822",
                             "", 6.0)
        items = await self.store.run(news, "dpkg")
        self.assertEqual([i.title for i in items], ["Second", "Accepted dpkg 1.0"])
        self.assertEqual(items[1].content, b"raw\xff")




class MaintenanceContractMixin:
    async def test_trim_all_bounce_stats(self):
        """Only the latest N days of stats are kept for every address."""
        for email in ("a@example.org", "b@example.org"):
            await self.store.run(subscribe, email, "dpkg")
            for day in range(1, 8):
                await self.store.run(record_sent, [email], f"2026-11-0{day}")
        removed = await self.store.run(trim_all_bounce_stats, 4)
        self.assertEqual(removed, 6)
        days = [s.day for s in await self.store.run(bounce_stats, "a@example.org")]
        self.assertEqual(days, ["2026-11-07", "2026-11-06", "2026-11-05", "2026-11-04"])

    async def test_purge_confirmations(self):
        """Expired confirmations and earlier days' send counters are removed."""
        await self.store.run(create_confirmation, "old", "a@example.org", [], 0.0)
        await self.store.run(create_confirmation, "new", "a@example.org", [], 1000.0)
        await self.store.run(count_confirmation_send, "a@example.org", "2026-11-01", 3)
        await self.store.run(count_confirmation_send, "a@example.org", "2026-11-02", 3)
        removed = await self.store.run(purge_confirmations, 1000.0, 500.0, "2026-11-02")
        self.assertEqual(removed, 1)
        self.assertEqual(await self.store.run(take_confirmation, "old", 1000.0, 500.0),
                         "unknown")
        left = await self.store.run(lambda: (yield Rows(
            "SELECT day FROM confirmation_sends")))
        self.assertEqual([tuple(r) for r in left], [("2026-11-02",)])


class EnqueueProgramTests(SynchronousTestCase):
    def test_deliveries_taken_a_chunk_at_a_time(self):
        """
        enqueue takes its deliveries from any iterable, a chunk of rows per
        INSERT, so a fan-out made as it is taken is never held whole.
        """
        from trackermail.store.sql import MANY_CHUNK

        taken = []

        def deliveries():
            for i in range(2 * MANY_CHUNK + 5):
                taken.append(i)
                yield (f"r{i}@example.org", "bounces@t.example.org", b"X-A: b\r\n")

        program = enqueue(b"Subject: s\r\n\r\nbody\r\n", deliveries(), 1.0)
        op = next(program)
        self.assertIn("INSERT INTO outbox_messages", op.sql)
        op = program.send(7)
        self.assertIsInstance(op, Many)
        self.assertEqual(len(op.rows), MANY_CHUNK)
        self.assertLessEqual(len(taken), MANY_CHUNK + 1)
        self.assertEqual(op.rows[0][:3], (7, "r0@example.org", "bounces@t.example.org"))
        sizes = [len(op.rows)]
        while True:
            op = program.send(None)
            if not isinstance(op, Many):
                break
            sizes.append(len(op.rows))
        self.assertEqual(sizes, [MANY_CHUNK, MANY_CHUNK, 5])
        self.assertIsInstance(op, Notify)

    def test_no_deliveries_no_message(self):
        """An empty iterable stores nothing and fires with None."""
        program = enqueue(b"x", iter(()), 1.0)
        with self.assertRaises(StopIteration) as stop:
            next(program)
        self.assertIsNone(stop.exception.value)


class MemoryStoreTests(MaintenanceContractMixin, StoreContractMixin, TestCase):
    async def make_store(self):
        return make_memory_store(self)


class SQLiteStoreTests(MaintenanceContractMixin, StoreContractMixin, TestCase):
    async def make_store(self):
        return await make_sqlite_store(self)


class PostgresStoreTests(MaintenanceContractMixin, StoreContractMixin, TestCase):
    async def make_store(self):
        return await make_pg_store(self)


class PostgresRoundTripTests(TestCase):
    timeout = 60

    async def test_queued_statements_share_round_trips(self):
        """
        BEGIN, Later, Many and Notify travel with the next statement that
        has an answer, or with the COMMIT: this program takes two round
        trips where one per statement would take seven.
        """

        store = await make_pg_store(self)
        sent = record_queries(self)

        def program():
            yield Later("INSERT INTO packages (name, kind) VALUES (?, ?)", ("rt", "source"))
            pid = yield Value("SELECT id FROM packages WHERE name = ?", ("rt",))
            yield Many("INSERT INTO packages (name, kind) VALUES (?, ?)",
                       [("rt1", "source"), ("rt2", "source")])
            yield Notify("outbox")
            yield Notify("outbox")
            return pid

        pid = await store.run(program)
        self.assertIsInstance(pid, int)
        self.assertEqual(len(sent), 2, sent)
        self.assertIn(b"BEGIN; ", sent[0])
        self.assertEqual(sent[1].count(b"pg_notify"), 1)
        self.assertTrue(sent[1].endswith(b"COMMIT"), sent[1])
        count = await store.run(lambda: (yield Value(
            "SELECT COUNT(*) FROM packages WHERE name LIKE 'rt%'")))
        self.assertEqual(count, 3)


    async def test_reads_need_no_transaction(self):
        """
        A program that only reads takes one round trip per statement, with
        no BEGIN or COMMIT; one that reads then writes begins at its first
        write and commits it.
        """

        store = await make_pg_store(self)
        sent = record_queries(self)

        def read():
            return (yield Value("SELECT COUNT(*) FROM packages WHERE kind = ?", ("source",)))

        self.assertEqual(await store.run(read), 0)
        self.assertEqual(len(sent), 1)
        self.assertNotIn(b"BEGIN", sent[0])
        del sent[:]

        def read_then_write():
            n = yield Value("SELECT COUNT(*) FROM packages WHERE kind = ?", ("source",))
            yield Later("INSERT INTO packages (name, kind) VALUES (?, ?)", (f"rw{n}", "source"))
            rows = yield Rows("SELECT name FROM packages WHERE name LIKE 'rw%' FOR UPDATE")
            return [r[0] for r in rows]

        self.assertEqual(await store.run(read_then_write), ["rw0"])
        self.assertEqual(len(sent), 3, sent)
        self.assertNotIn(b"BEGIN", sent[0])
        self.assertIn(b"BEGIN", sent[1])
        self.assertIn(b"FOR UPDATE", sent[1])
        self.assertEqual(sent[2], b"COMMIT")
        self.assertEqual(await store.run(read), 1)


class PostgresPreparedTests(TestCase):
    timeout = 60

    async def test_statements_run_prepared(self):
        """A statement run twice on a connection is prepared once, then executed."""

        from trackermail.store.postgres import PostgresStore

        store = PostgresStore((await make_pg_store(self)).dsn, size=1)
        self.addCleanup(store.close)
        sent = record_queries(self)

        def kind(name):
            return (yield Value("SELECT kind FROM packages WHERE name = ?", (name,)))

        self.assertIsNone(await store.run(kind, "nothing"))
        self.assertIsNone(await store.run(kind, "nothing else"))
        texts = b" ".join(sent)
        self.assertEqual(texts.count(b"PREPARE "), 1)
        self.assertEqual(texts.count(b"EXECUTE "), 2)
        self.assertIn(b"'nothing else'", texts)

    async def test_long_in_lists_are_not_prepared(self):
        """
        A batch's IN (?, ?, ...) list, a new text for every length, is sent
        in full instead of being prepared.
        """

        from trackermail.store.postgres import PostgresStore

        store = PostgresStore((await make_pg_store(self)).dsn, size=1)
        self.addCleanup(store.close)
        sent = record_queries(self)
        for n in (40, 41):
            names = [f"n{i}" for i in range(n)]
            await store.run(lambda: (yield Rows(
                "SELECT id FROM packages WHERE name IN (" + ",".join("?" * n) + ")", names)))
        texts = b" ".join(sent)
        self.assertNotIn(b"PREPARE", texts)
        self.assertIn(b"'n40'", texts)

    async def test_switched_off(self):
        """With prepared_statements off (behind a transaction pooler) nothing is prepared."""

        from trackermail.config import config_from_dict
        from trackermail.store import open_store

        config = config_from_dict({"tracker": {"fqdn": "t.example.org", "dev": True},
                                   "database": {"prepared_statements": False}},
                                  warn=lambda m: None)
        self.assertFalse(config.database.prepared_statements)
        store = open_store((await make_pg_store(self)).dsn, pool_size=1,
                           prepared_statements=config.database.prepared_statements)
        self.addCleanup(store.close)
        sent = record_queries(self)
        for _ in range(2):
            await store.run(lambda: (yield Value("SELECT COUNT(*) FROM packages WHERE kind = ?",
                                                 ("source",))))
        texts = b" ".join(sent)
        self.assertNotIn(b"PREPARE", texts)
        self.assertEqual(texts.count(b"SELECT COUNT(*) FROM packages"), 2)

    async def test_failure_before_a_queued_prepare(self):
        """
        When a statement fails ahead of a PREPARE in the same query text,
        that PREPARE never ran: the connection forgets what it prepared and
        the next transaction prepares again instead of failing.
        """
        from trackermail.store.postgres import PostgresStore

        store = PostgresStore((await make_pg_store(self)).dsn, size=1)
        self.addCleanup(store.close)
        await store.run(lambda: (yield Exec(
            "INSERT INTO packages (name, kind) VALUES ('taken', 'source')")))

        def clash():
            yield Later("INSERT INTO packages (name, kind) VALUES (?, ?)", ("taken", "source"))
            return (yield Value("SELECT COUNT(*) FROM packages WHERE kind = ?", ("source",)))

        with self.assertRaises(Exception):
            await store.run(clash)

        def count():
            return (yield Value("SELECT COUNT(*) FROM packages WHERE kind = ?", ("source",)))

        self.assertEqual(await store.run(count), 1)


class PostgresQueueTests(TestCase):
    timeout = 60

    async def test_large_many_is_sent_in_bounded_pieces(self):
        """
        A fan-out's rows are sent as they are bound, never held whole: no
        query text is much over the queue limit, and all rows arrive.
        """

        from trackermail.store import sql

        store = await make_pg_store(self)
        self.patch(sql, "QUEUE_LIMIT", 20_000)
        self.patch(sql, "MANY_CHUNK", 50)
        sent = record_queries(self)
        rows = [(f"queued{i:05d}", "source") for i in range(3000)]
        await store.run(lambda: (yield Many(
            "INSERT INTO packages (name, kind) VALUES (?, ?)", rows)))
        self.assertGreaterEqual(len(sent), 4)
        self.assertLess(max(len(q) for q in sent), 20_000 + 50 * 60)
        count = await store.run(lambda: (yield Value(
            "SELECT COUNT(*) FROM packages WHERE name LIKE 'queued%'")))
        self.assertEqual(count, 3000)


class PostgresNotifyTests(TestCase):
    timeout = 60

    async def test_enqueue_on_one_node_wakes_another(self):
        """A delivery queued through one store notifies listeners of another (LISTEN/NOTIFY)."""
        from twisted.internet import defer, reactor

        from trackermail.store.postgres import PostgresStore

        store_a = await make_pg_store(self)
        store_b = PostgresStore(store_a.dsn, size=1)
        self.addCleanup(store_b.close)
        await store_b.start()
        woken = defer.Deferred()
        await store_b.listen("outbox", lambda: woken.called or woken.callback(True))
        await store_a.run(enqueue, b"x", [("a@example.org", "")], 1.0)
        self.assertTrue(await woken.addTimeout(30, reactor))
