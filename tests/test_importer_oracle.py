"""
The import checked against distro-tracker itself.

C{TRACKERMAIL_DISTRO_TRACKER} names a folder (with a README.md) whose
subfolders (C{dev/}, and any other) each hold an export made by
distro-tracker (C{dump.json}) and what distro-tracker's own code did with
it: C{expected.jsonl} lists, for every (package, keyword) pair that
reaches anybody, the addresses its dispatch mailed; C{expected_teams.jsonl}
who a mail to each team's address reaches; C{expected_addresses.jsonl}
each address's subscriptions and teams.

Each data set is imported, then one real C{dispatch+PKG_KEYWORD@} mail per
pair of the export's packages and keywords goes through the processor,
and the envelope recipients of its copies must be those distro-tracker
mailed (as a set: trackermail sends one copy per address where
distro-tracker sends one per subscription and team), and nobody for the
pairs distro-tracker mailed nobody. The deliberate differences are named
below and documented in docs/migration.md.

Without the variable the tests skip, unless C{TRACKERMAIL_TEST_DATA_REQUIRED=1}.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter

from twisted.trial.unittest import SkipTest, TestCase

from tests.support.pipeline import FQDN, FakeClock, make_config
from tests.support.stores import make_pg_store, make_sqlite_store
from trackermail.classify import normalise_keyword
from trackermail.errors import InvalidValue
from trackermail.importer import import_export, read_dump
from trackermail.processing import Processor
from trackermail.service import default_handlers
from trackermail.store.keywords import default_keywords
from trackermail.store.keywords import keywords as all_keywords
from trackermail.store.outbox_report import delivery_rows
from trackermail.store.subscriptions import (
    is_subscribed,
    subscription_keywords,
    subscriptions_of,
)
from trackermail.store.teams import get_team, team_packages, teams_of
from trackermail.validation import is_keyword, is_package_name, normalize_email

ENV = "TRACKERMAIL_DISTRO_TRACKER"
REQUIRED = "TRACKERMAIL_TEST_DATA_REQUIRED"


def data_sets() -> list[str]:
    """The folders of data sets under C{$TRACKERMAIL_DISTRO_TRACKER}."""
    root = os.environ.get(ENV)
    if not root:
        reason = (f"{ENV} is not set (the folder holding distro-tracker's README.md and "
                  "dev/ with dump.json and expected*.jsonl)")
        if os.environ.get(REQUIRED) == "1":
            raise AssertionError(f"{REQUIRED}=1 but {reason}")
        raise SkipTest(reason)
    found = sorted(
        os.path.join(root, name) for name in os.listdir(root)
        if os.path.isfile(os.path.join(root, name, "dump.json"))
        and os.path.isfile(os.path.join(root, name, "expected.jsonl")))
    if not found:
        raise AssertionError(f"{ENV}={root} holds no folder with dump.json and expected.jsonl")
    return found


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def raw_names(path: str) -> tuple[list[str], list[str], set[str]]:
    """
    Every package and keyword name of the export as distro-tracker has
    them, and the addresses trackermail refuses (lower-cased).
    """
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)

    def values(model, name):
        return {r["fields"][name] for r in rows if r.get("model") == model}

    refused = set()
    for email in values("django_email_accounts.useremail", "email"):
        try:
            normalize_email(email)
        except InvalidValue:
            refused.add(email.lower())
    return (sorted(values("core.packagename", "name")), sorted(values("core.keyword", "name")),
            refused)


# Deliberate difference (docs/migration.md, "Names"): trackermail reaches a
# package or keyword only through an address, dispatch+PKG_KEYWORD@, whose
# parts must be Debian-style lower-case names; and it reads the old PTS
# keyword names (cvs, buildd, ...) as the keywords that replaced them. Such
# names cannot be addressed, so their pairs are left out of the comparison.
def unaddressable(package: str, keyword: str) -> str | None:
    if not is_package_name(package):
        return "package name that cannot be part of dispatch+PKG_KEYWORD@"
    if not is_keyword(keyword) or normalise_keyword(keyword) != keyword:
        return "keyword name that cannot be part of dispatch+PKG_KEYWORD@, or an old PTS name"
    return None


# Deliberate difference (docs/migration.md, "Team slugs"): trackermail's team
# slugs are lower case with '-' where distro-tracker allowed '_'.
def trackermail_slug(slug: str) -> str:
    return slug.strip().lower().replace("_", "-").lstrip("-")


def approved_mail(to: str, subject: str) -> bytes:
    return (f"Delivered-To: {to}\r\nReturn-Path: <archive@example.net>\r\n"
            f"From: archive@example.net\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{hashlib.sha1(to.encode()).hexdigest()}@example.net>\r\n"
            "X-Distro-Tracker-Approved: yes\r\n\r\nHello.\r\n").encode()


class _OracleMixin:
    """The comparison, on the store C{make_store} gives."""

    async def imported(self, folder: str):
        store = await self.make_store()
        dump = read_dump(os.path.join(folder, "dump.json"))
        first = await import_export(store, dump.export, now=1000.0)
        self.assertTrue(first.changed)
        again = await import_export(store, dump.export, now=2000.0)
        self.assertFalse(again.changed, "\n".join(again.summary()))
        self.assertIn("nothing changed: the store already holds all of it", again.summary())
        processor = Processor(make_config(tracker={"vendor": "generic"}), store,
                              default_handlers(), vendor=_generic(), clock=FakeClock())
        processor.thread_parse_over = None
        return store, processor

    async def recipients(self, store, processor, to: str, subject: str) -> set[str]:
        before = len(await store.run(delivery_rows))
        await processor.process_bytes(approved_mail(to, subject))
        rows = await store.run(delivery_rows)
        return {recipient.lower() for recipient, *_ in rows[before:]}

    async def test_every_pair_reaches_what_distro_tracker_mailed(self):
        """
        For every (package, keyword) pair of the export, dispatch mail reaches
        exactly the addresses distro-tracker mailed, and nobody where it
        mailed nobody.
        """
        for folder in data_sets():
            store, processor = await self.imported(folder)
            expected = {(e["package"], e["keyword"]): e
                        for e in read_jsonl(os.path.join(folder, "expected.jsonl"))}
            packages, keywords, refused = raw_names(os.path.join(folder, "dump.json"))
            pairs = {(p, k) for p in packages for k in keywords} | set(expected)
            checked, unaddressable_pairs, refused_copies, wrong = 0, Counter(), 0, []
            for package, keyword in sorted(pairs):
                reason = unaddressable(package, keyword)
                if reason is not None:
                    unaddressable_pairs[reason] += 1
                    continue
                entry = expected.get((package, keyword), {})
                want = {a.lower() for a in entry.get("subscribers", [])}
                want |= {a.lower() for a in entry.get("team_members", [])}
                # Deliberate difference (docs/migration.md, "Addresses"): an
                # address trackermail refuses is not imported and gets nothing.
                if want & refused:
                    refused_copies += len(want & refused)
                    want -= refused
                got = await self.recipients(store, processor,
                                            f"dispatch+{package}_{keyword}@{FQDN}",
                                            f"{package} {keyword}")
                checked += 1
                if got != want:
                    wrong.append(f"{package}_{keyword}: missing {sorted(want - got)}, "
                                 f"extra {sorted(got - want)}")
            self.assertEqual(wrong, [], f"{folder}: {len(wrong)} of {checked} pairs differ "
                                        f"(left out: {dict(unaddressable_pairs)} pairs, "
                                        f"{refused_copies} copies to refused addresses)")
            self.assertGreater(checked, 0)
            unaddressed = sum(unaddressable_pairs.values())
            summary = os.path.join(folder, "oracle_summary.json")
            if os.path.exists(summary) and not unaddressed:
                with open(summary) as f:
                    self.assertEqual(checked, json.load(f)["pairs_total"])

    async def test_team_contact_reaches_unmuted_members(self):
        """Mail to team+SLUG@ reaches the addresses distro-tracker sends it to."""
        for folder in data_sets():
            path = os.path.join(folder, "expected_teams.jsonl")
            if not os.path.exists(path):
                continue
            store, processor = await self.imported(folder)
            refused = raw_names(os.path.join(folder, "dump.json"))[2]
            for team in read_jsonl(path):
                slug = trackermail_slug(team["slug"])
                got = await self.recipients(store, processor, f"team+{slug}@{FQDN}",
                                            f"hello {slug}")
                self.assertEqual(got, {a.lower() for a in team["contact_recipients"]} - refused,
                                 slug)
                found = await store.run(get_team, slug)
                self.assertEqual((found.name, found.public, (found.owner or "").lower()),
                                 (team["name"].strip() or slug, team["public"],
                                  (team["owner"] or "").lower()))
                self.assertEqual(sorted(await store.run(team_packages, slug)),
                                 sorted(team["packages"]))

    async def test_addresses_keep_their_subscriptions_and_teams(self):
        """
        Each address lists the packages distro-tracker's `which` lists, each
        subscription keeps its state and effective keywords, and each address
        its default keywords and teams.
        """
        for folder in data_sets():
            path = os.path.join(folder, "expected_addresses.jsonl")
            if not os.path.exists(path):
                continue
            store, _ = await self.imported(folder)
            refused = raw_names(os.path.join(folder, "dump.json"))[2]
            flagged = {k.name for k in await store.run(all_keywords) if k.is_default}
            by_lower: dict[str, list] = {}
            for entry in read_jsonl(path):
                by_lower.setdefault(entry["email"].lower(), []).append(entry)
            for lower, entries in sorted(by_lower.items()):
                if lower in refused:
                    continue
                which = sorted({p for e in entries for p in e["which"]})
                self.assertEqual(await store.run(subscriptions_of, lower), which, lower)
                teams = sorted({trackermail_slug(t["team"]) for e in entries for t in e["teams"]})
                self.assertEqual([t.slug for t in await store.run(teams_of, lower)], teams, lower)
                # Deliberate difference (docs/migration.md, "Addresses"):
                # spellings differing only in case are one address, with merged
                # settings; what it receives is compared through dispatch above.
                if len(entries) > 1:
                    continue
                entry = entries[0]
                defaults = (set(entry["default_keywords"]) if entry["has_email_settings"]
                            else flagged)
                self.assertEqual(set(await store.run(default_keywords, lower)), defaults, lower)
                for sub in entry["subscriptions"]:
                    active = await store.run(is_subscribed, lower, sub["package"])
                    keywords = await store.run(subscription_keywords, lower, sub["package"])
                    self.assertEqual((active, set(keywords)),
                                     (sub["active"], set(sub["keywords"])),
                                     f"{lower} {sub['package']}")


def _generic():
    from trackermail.vendor import load_vendor

    return load_vendor("generic")


class SQLiteOracleTests(_OracleMixin, TestCase):
    async def make_store(self):
        return await make_sqlite_store(self)


class PostgresOracleTests(_OracleMixin, TestCase):
    async def make_store(self):
        return await make_pg_store(self)
