"""
The bounce policy's store programs on every backend: in-memory SQLite, an
SQLite file, and PostgreSQL.
"""

from twisted.trial.unittest import TestCase

from tests.support.stores import make_memory_store, make_pg_store, make_sqlite_store
from trackermail.store.bounce_domains import (
    domain_report,
    record_domain_bounce,
    refusing_since,
    trim_domain_bounces,
)
from trackermail.store.bounce_stats import (
    MailDay,
    bounce_stats,
    bouncing_addresses,
    mail_days,
    mark_copy_bounced,
    receives_mail,
    record_effect,
    record_sent,
    trim_all_bounce_stats,
    trim_bounced_copies,
)
from trackermail.store.emails import email_id
from trackermail.store.sql import Value
from trackermail.store.subscriptions import subscribe, unsubscribe_all
from trackermail.store.teams import add_team, set_membership_muted


class BounceStoreMixin:
    async def make_store(self):
        raise NotImplementedError

    async def setUp(self):
        self.store = await self.make_store()
        await self.store.run(subscribe, "a@example.org", "dpkg")
        self.eid = await self.store.run(email_id, "a@example.org", False)

    async def test_effects_and_mail_days(self):
        """Hard, soft and refused bounces count apart; all-refused days are no mail days."""
        for day in ("2026-11-01", "2026-11-02"):
            await self.store.run(record_sent, ["a@example.org"], day)
            await self.store.run(record_sent, ["a@example.org"], day)
        for effect in ("hard", "soft"):
            await self.store.run(record_effect, self.eid, "2026-11-01", effect)
        for _ in range(2):
            await self.store.run(record_effect, self.eid, "2026-11-02", "refused")
        days = await self.store.run(mail_days, self.eid, 10)
        self.assertEqual(days, [MailDay("2026-11-01", 2, 1, 1, 0)])
        self.assertTrue(days[0].all_bounced)
        self.assertFalse(days[0].all_hard)

    async def test_trim_keeps_latest_mail_days(self):
        """Trimming keeps the latest N mail days, and days newer than them whatever they are."""
        for day in range(1, 8):
            await self.store.run(record_sent, ["a@example.org"], f"2026-11-0{day}")
        await self.store.run(record_effect, self.eid, "2026-11-07", "refused")
        removed = await self.store.run(trim_all_bounce_stats, 3)
        self.assertEqual(removed, 3)
        days = [s.day for s in await self.store.run(bounce_stats, "a@example.org")]
        self.assertEqual(days, ["2026-11-07", "2026-11-06", "2026-11-05", "2026-11-04"])
        # A day of refusals only goes when older than `before`.
        self.assertEqual(await self.store.run(trim_all_bounce_stats, 3, "2026-11-08"), 1)

    async def test_copies_count_once(self):
        """A copy is recorded once; old copies are forgotten."""
        self.assertTrue(await self.store.run(mark_copy_bounced, "c1", "2026-11-01", 1.0))
        self.assertFalse(await self.store.run(mark_copy_bounced, "c1", "2026-11-01", 2.0))
        self.assertTrue(await self.store.run(mark_copy_bounced, "c2", "2026-11-03", 2.0))
        self.assertEqual(await self.store.run(trim_bounced_copies, "2026-11-02"), 1)
        self.assertTrue(await self.store.run(mark_copy_bounced, "c1", "2026-11-01", 3.0))

    async def test_domains(self):
        """Per domain and reason: counts, first and last seen, since when, the last diagnostic."""
        for day, now in (("2026-11-01", 10.0), ("2026-11-03", 20.0), ("2026-11-04", 30.0),
                         ("2026-11-04", 40.0)):
            first = await self.store.run(record_domain_bounce, day, "gmail.com", "blocked",
                                         "ours", True, now, f"550 blocked {now}")
            self.assertEqual(first, now != 40.0)
        await self.store.run(record_domain_bounce, "2026-11-04", "gmail.com", "userunknown",
                             "gone", False, 35.0, "")
        self.assertEqual(await self.store.run(refusing_since, "gmail.com", "blocked",
                                              "2026-11-04"), 20.0)
        rows = await self.store.run(domain_report, "2026-11-02", "GMail.com")
        self.assertEqual([(r.reason, r.group, r.hard, r.soft, r.first_seen, r.last_seen,
                           r.diagnostic) for r in rows],
                         [("blocked", "ours", 3, 0, 20.0, 40.0, "550 blocked 40.0"),
                          ("userunknown", "gone", 0, 1, 35.0, 35.0, "")])
        self.assertEqual(await self.store.run(domain_report, "2026-11-02", "other.org"), [])
        self.assertEqual(await self.store.run(trim_domain_bounces, "2026-11-04"), 2)

    async def test_receives_mail(self):
        """An address gets mail by a subscription or an unmuted membership."""
        self.assertTrue(await self.store.run(receives_mail, "A@example.org"))
        await self.store.run(unsubscribe_all, "a@example.org")
        self.assertFalse(await self.store.run(receives_mail, "a@example.org"))
        await self.store.run(add_team, "qa", "QA", "a@example.org")
        self.assertTrue(await self.store.run(receives_mail, "a@example.org"))
        await self.store.run(set_membership_muted, "qa", "a@example.org", True)
        self.assertFalse(await self.store.run(receives_mail, "a@example.org"))
        self.assertFalse(await self.store.run(receives_mail, "nobody@example.org"))

    async def test_bouncing_addresses(self):
        """Addresses with bounces since a day, by domain too, with their mail days."""
        await self.store.run(subscribe, "b@example.net", "dpkg")
        eid_b = await self.store.run(email_id, "b@example.net", False)
        for eid, email in ((self.eid, "a@example.org"), (eid_b, "b@example.net")):
            await self.store.run(record_sent, [email], "2026-11-05")
            await self.store.run(record_effect, eid, "2026-11-05", "soft")
        found = await self.store.run(bouncing_addresses, "2026-11-05", 14)
        self.assertEqual([e for e, _ in found], ["a@example.org", "b@example.net"])
        found = await self.store.run(bouncing_addresses, "2026-11-05", 14, "example.NET")
        self.assertEqual(found, [("b@example.net", [MailDay("2026-11-05", 1, 0, 1, 0)])])
        self.assertEqual(await self.store.run(bouncing_addresses, "2026-11-06", 14), [])
        count = await self.store.run(lambda: (yield Value("SELECT COUNT(*) FROM bounce_stats")))
        self.assertEqual(count, 2)


class MemoryBounceStoreTests(BounceStoreMixin, TestCase):
    async def make_store(self):
        return make_memory_store(self)


class SQLiteBounceStoreTests(BounceStoreMixin, TestCase):
    async def make_store(self):
        return await make_sqlite_store(self)


class PostgresBounceStoreTests(BounceStoreMixin, TestCase):
    async def make_store(self):
        return await make_pg_store(self)
