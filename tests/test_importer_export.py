"""
Importing distro-tracker's own export (manage.py dumpdata): what is read,
what mail goes where afterwards, bad rows, addresses differing in case,
re-imports, and the admin command. The exports are written inline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.stores import make_memory_store, make_pg_store, make_sqlite_store
from tests.support.terminal import on_terminal
from trackermail.distro_tracker import (
    Membership,
    PackageSetting,
    Subscription,
    read_export,
)
from trackermail.importer import DumpError, import_export, read_dump
from trackermail.store.bounce_stats import BounceDay, bounce_stats
from trackermail.store.keywords import default_keywords
from trackermail.store.keywords import keywords as all_keywords
from trackermail.store.packages import add_package, get_package, resolve_package
from trackermail.store.subscriptions import (
    is_subscribed,
    recipients_for,
    subscribe,
    subscribers_of,
    subscription_keywords,
    subscriptions_of,
)
from trackermail.store.teams import get_team, team_member_ids


def row(model, pk, **fields):
    return {"model": model, "pk": pk, "fields": fields}


def keyword(pk, name, default=True):
    return row("core.keyword", pk, name=name, default=default, description=f"about {name}")


def package(pk, name, source=False, binary=False, pseudo=False):
    return row("core.packagename", pk, name=name, source=source, binary=binary, pseudo=pseudo)


def address(pk, email):
    return row("django_email_accounts.useremail", pk, email=email, user=None)


def settings(pk, email_pk, keywords):
    return row("core.emailsettings", pk, user_email=email_pk, default_keywords=keywords)


def subscription(pk, settings_pk, package_pk, active=True, keywords=None):
    return row("core.subscription", pk, email_settings=settings_pk, package=package_pk,
               active=active, _use_user_default_keywords=keywords is None,
               _keywords=keywords or [])


def team(pk, slug, packages, owner=None, public=True):
    return row("core.team", pk, name=slug.title(), slug=slug, maintainer_email=None,
               description="", url="", public=public,
               owner=[owner] if owner else None, packages=packages)


def member(pk, email_pk, team_pk, muted=False, keywords=None):
    return row("core.teammembership", pk, user_email=email_pk, team=team_pk, muted=muted,
               has_membership_keywords=keywords is not None, default_keywords=keywords or [])


def specifics(pk, membership_pk, package_pk, muted=False, keywords=None):
    return row("core.membershippackagespecifics", pk, membership=membership_pk,
               package_name=package_pk, _has_keywords=keywords is not None, muted=muted,
               keywords=keywords or [])


def bounces(pk, email_pk, day, sent, bounced):
    return row("mail.bouncestats", pk, user_email=email_pk, mails_sent=sent,
               mails_bounced=bounced, date=day)


def account(main_email):
    return {"model": "django_email_accounts.user",
            "fields": {"main_email": main_email, "password": "!", "is_active": True}}


DEFAULT, BTS, VCS = 1, 2, 3
DPKG, APT, LIBAPT, WNPP, GHOST = 1, 2, 3, 4, 5
JANE, BOB, CAROL = 1, 2, 3


def base_export() -> list:
    """
    jane follows her defaults (default, bts) on dpkg and has her own set
    (vcs) on apt; Bob's dpkg subscription was never confirmed and his wnpp
    one has an empty set; carol has no settings and is in the core team
    (dpkg, apt) with vcs only for apt; Bob's membership is muted.
    """
    return [
        keyword(DEFAULT, "default"), keyword(BTS, "bts"), keyword(VCS, "vcs", default=False),
        package(DPKG, "dpkg", source=True), package(APT, "apt", source=True, binary=True),
        package(LIBAPT, "libapt-pkg", binary=True), package(WNPP, "wnpp", pseudo=True),
        package(GHOST, "ghost"),
        row("core.sourcepackage", 1, source_package_name=APT, version="1",
            binary_packages=[APT, LIBAPT]),
        account("jane@example.net"),
        address(JANE, "jane@example.net"), address(BOB, "Bob@Example.org"),
        address(CAROL, "carol@example.com"),
        settings(1, JANE, [DEFAULT, BTS]), settings(2, BOB, [DEFAULT, BTS, VCS]),
        subscription(1, 1, DPKG), subscription(2, 1, APT, keywords=[VCS]),
        subscription(3, 2, DPKG, active=False), subscription(4, 2, WNPP, keywords=[]),
        team(1, "core-team", [DPKG, APT], owner="jane@example.net"),
        member(1, CAROL, 1), member(2, BOB, 1, muted=True),
        specifics(1, 1, APT, keywords=[VCS]),
        bounces(1, BOB, "2024-05-01", 3, 3),
    ]


class ReadExportTests(SynchronousTestCase):
    def test_reads_what_mail_needs(self):
        """Names replace pks, and each address has its effective defaults."""
        export = read_export(base_export())
        self.assertEqual(export.packages, {"dpkg": "source", "apt": "source",
                                           "libapt-pkg": "other", "wnpp": "pseudo",
                                           "ghost": "other"})
        self.assertEqual(export.binaries, {("apt", "apt"), ("libapt-pkg", "apt")})
        self.assertEqual(export.keywords["vcs"], (False, "about vcs"))
        jane = export.addresses["jane@example.net"]
        self.assertEqual(jane.defaults, {"default", "bts"})
        self.assertEqual(jane.subscriptions, {
            "dpkg": Subscription(True, None), "apt": Subscription(True, frozenset({"vcs"}))})
        bob = export.addresses["bob@example.org"]
        self.assertEqual((bob.email, bob.subscriptions["dpkg"], bob.subscriptions["wnpp"]),
                         ("Bob@Example.org", Subscription(False, None),
                          Subscription(True, frozenset())))
        self.assertEqual(export.addresses["carol@example.com"].defaults, {"default", "bts"})
        core = export.teams["core-team"]
        self.assertEqual((core.owner, core.packages, core.public), ("jane@example.net",
                                                                    ["dpkg", "apt"], True))
        self.assertEqual(core.members, {
            "carol@example.com": Membership(False, None, {
                "apt": PackageSetting(False, frozenset({"vcs"}))}),
            "bob@example.org": Membership(True, None)})
        self.assertEqual(export.bounces, {("bob@example.org", "2024-05-01"): (3, 3)})
        self.assertEqual(export.problems, {})

    def test_bad_rows_are_skipped_with_their_reason(self):
        """Each bad row is skipped (or its bad reference dropped) and counted by reason."""
        rows = base_export() + [
            42,
            {"model": "core.keyword", "pk": 9},
            keyword(8, "Bad_Keyword"),
            keyword(7, "bts"),
            package(9, "Bad_Name", source=True),
            address(9, "not-an-email"),
            settings(9, 99, [DEFAULT]),
            subscription(9, 1, 99),
            subscription(10, 1, GHOST, keywords=[BTS, 77]),
            subscription(11, 99, DPKG),
            subscription(12, 1, DPKG),
            row("core.subscription", 13, email_settings=1, package=WNPP, active="yes",
                _use_user_default_keywords=True, _keywords=[]),
            team(2, "Bad Slug!", [DPKG]),
            member(3, CAROL, 2),
            member(4, JANE, 99),
            member(5, 99, 1),
            specifics(2, 99, DPKG),
            specifics(3, 1, 99),
            bounces(2, BOB, "yesterday", 1, 1),
            bounces(3, BOB, "2024-05-02", -1, 0),
            row("auth.group", 1, name="admins"),
        ]
        export = read_export(rows)
        self.assertEqual(dict(export.problems), {
            ("(unknown)", "row skipped: not a dumpdata object"): 2,
            ("core.keyword", "row skipped: not a keyword name trackermail accepts"): 1,
            ("core.keyword", "row skipped: a keyword of that name came before"): 1,
            ("core.packagename", "row skipped: not a package name trackermail accepts"): 1,
            ("django_email_accounts.useremail", "row skipped: not a valid email address"): 1,
            ("core.emailsettings", "row skipped: its address is unknown or was skipped"): 1,
            ("core.subscription", "row skipped: its package is unknown or was skipped"): 1,
            ("core.subscription", "keyword reference dropped: unknown keyword"): 1,
            ("core.subscription",
             "row skipped: its email settings are unknown or were skipped"): 1,
            ("core.subscription",
             "row skipped: the address is subscribed to that package already"): 1,
            ("core.subscription", "row skipped: active is not true or false"): 1,
            ("core.team", "row skipped: not a team slug trackermail accepts"): 1,
            ("core.teammembership", "row skipped: its team is unknown or was skipped"): 2,
            ("core.teammembership", "row skipped: its address is unknown or was skipped"): 1,
            ("core.membershippackagespecifics",
             "row skipped: its membership is unknown or was skipped"): 1,
            ("core.membershippackagespecifics",
             "row skipped: its package is unknown or was skipped"): 1,
            ("mail.bouncestats", "row skipped: date is not YYYY-MM-DD"): 1,
            ("mail.bouncestats", "row skipped: mails_sent is not a count"): 1,
        })
        self.assertIn("core.subscription 9: row skipped: its package is unknown or was skipped",
                      export.messages)
        self.assertEqual(export.ignored, {"auth.group": 1})
        # What was good is all there, a subscription minus its unknown keyword.
        jane = export.addresses["jane@example.net"]
        self.assertEqual(jane.subscriptions["ghost"], Subscription(True, frozenset({"bts"})))
        self.assertEqual(sorted(jane.subscriptions), ["apt", "dpkg", "ghost"])
        self.assertEqual(sorted(export.teams), ["core-team"])
        self.assertEqual(sorted(export.teams["core-team"].members),
                         ["bob@example.org", "carol@example.com"])

    def test_team_slug_adapted_and_owner_resolved(self):
        """A slug with capitals or '_' is adapted and counted; an unknown owner is dropped."""
        export = read_export(base_export() + [
            team(2, "Perl_Group", [DPKG], owner="nobody@example.org"),
            team(3, "perl-group", [APT]),
        ])
        self.assertEqual(sorted(export.teams), ["core-team", "perl-group"])
        self.assertEqual((export.teams["perl-group"].owner,
                          export.teams["perl-group"].packages), (None, ["dpkg"]))
        self.assertEqual(dict(export.problems), {
            ("core.team", "slug changed to lower case, '-' for '_'"): 1,
            ("core.team", "owner dropped: unknown account"): 1,
            ("core.team", "row skipped: a team with that slug came before"): 1,
        })


class _Imports:
    """Helpers over a memory store: import, and who receives what."""

    def setUp(self):
        self.store = make_memory_store(self)

    def imported(self, rows):
        return self.successResultOf(import_export(self.store, read_export(rows), now=10.0))

    def reach(self, package, keyword):
        """(direct subscribers, team members) a mail of package/keyword reaches."""
        direct, team = self.successResultOf(self.store.run(recipients_for, package,
                                                           keyword))
        return sorted(direct), sorted(email for email, _ in team)


class ImportExportTests(_Imports, SynchronousTestCase):
    def test_mail_goes_where_distro_tracker_sent_it(self):
        """After the import each keyword reaches whom distro-tracker mailed."""
        self.imported(base_export())
        self.assertEqual(self.reach("dpkg", "bts"), (["jane@example.net"],
                                                     ["carol@example.com"]))
        self.assertEqual(self.reach("dpkg", "vcs"), ([], []))
        self.assertEqual(self.reach("apt", "vcs"), (["jane@example.net"],
                                                    ["carol@example.com"]))
        self.assertEqual(self.reach("apt", "bts"), ([], []))
        self.assertEqual(self.reach("wnpp", "default"), ([], []))
        self.assertEqual(self.successResultOf(self.store.run(subscriptions_of, "bob@example.org")),
                         ["wnpp"])
        self.assertFalse(self.successResultOf(self.store.run(is_subscribed,
                                                             "bob@example.org", "dpkg")))

    def test_packages_teams_and_bounces(self):
        """Kinds, binaries, teams (owner not made a member) and bounce days are stored."""
        self.imported(base_export())
        resolved = self.successResultOf(self.store.run(resolve_package, "libapt-pkg"))
        self.assertEqual((resolved.kind, resolved.source), ("binary", "apt"))
        self.assertEqual(self.successResultOf(self.store.run(get_package, "wnpp")).kind, "pseudo")
        self.assertEqual(self.successResultOf(self.store.run(get_package, "ghost")).kind, "other")
        found = self.successResultOf(self.store.run(get_team, "core-team"))
        self.assertEqual((found.name, found.public, found.owner),
                         ("Core-Team", True, "jane@example.net"))
        members = self.successResultOf(self.store.run(team_member_ids, "core-team"))
        self.assertEqual([email for email, _ in members], ["carol@example.com"])
        self.assertEqual(self.successResultOf(self.store.run(bounce_stats, "bob@example.org")),
                         [BounceDay("2024-05-01", 3, 3)])

    def test_second_run_changes_nothing_and_says_so(self):
        """Importing the same export again writes nothing and the summary says so."""
        first = self.imported(base_export())
        self.assertEqual((first.tallies["subscriptions"].created,
                          first.tallies["memberships"].created), (4, 2))
        again = self.imported(base_export())
        self.assertFalse(again.changed)
        self.assertEqual(again.tallies["subscriptions"].unchanged, 4)
        self.assertEqual(again.summary()[-1], "nothing changed: the store already holds all of it")
        self.assertIn("  subscriptions:                           4 in the export: 0 created, "
                      "0 changed, 4 unchanged (1 of them inactive)", again.summary())

    def test_newer_export_wins_for_what_it_names(self):
        """A later export changes the rows it names and leaves the others alone."""
        self.imported(base_export())
        self.successResultOf(self.store.run(subscribe, "dave@example.org", "dpkg"))
        rows = base_export()
        rows[rows.index(subscription(2, 1, APT, keywords=[VCS]))] = subscription(2, 1, APT)
        rows[rows.index(member(2, BOB, 1, muted=True))] = member(2, BOB, 1, keywords=[VCS])
        rows[rows.index(settings(2, BOB, [DEFAULT, BTS, VCS]))] = settings(2, BOB, [BTS])
        result = self.imported(rows)
        self.assertEqual([(k, t.created, t.updated) for k, t in result.tallies.items()
                          if t.created or t.updated],
                         [("addresses", 0, 1), ("subscriptions", 0, 1), ("memberships", 0, 1)])
        self.assertEqual(self.reach("apt", "bts"), (["jane@example.net"], []))
        self.assertEqual(self.reach("dpkg", "vcs"), ([], ["Bob@Example.org"]))
        self.assertIn("dave@example.org",
                      self.successResultOf(self.store.run(subscribers_of, "dpkg")))

    def test_keyword_flags_follow_the_export(self):
        """
        An address without settings gets the keywords the export marks
        default; a custom keyword is created.
        """
        rows = base_export()
        rows[rows.index(keyword(VCS, "vcs", default=False))] = keyword(VCS, "vcs")
        rows.append(keyword(4, "custom", default=False))
        result = self.imported(rows)
        self.assertEqual((result.tallies["keywords"].created,
                          result.tallies["keywords"].updated), (1, 1))
        self.assertEqual(self.reach("dpkg", "vcs"), ([], ["carol@example.com"]))
        names = {k.name: k.is_default for k in self.successResultOf(self.store.run(all_keywords))}
        self.assertEqual((names["vcs"], names["custom"]), (True, False))

    def test_existing_store_state(self):
        """
        Name-only packages take the export's kind, a known source keeps its
        kind, and a subscription already as the export says is unchanged.
        """
        self.successResultOf(self.store.run(subscribe, "x@example.org", "wnpp"))
        self.successResultOf(self.store.run(add_package, "ghost"))
        self.successResultOf(self.store.run(subscribe, "jane@example.net", "dpkg"))
        result = self.imported(base_export())
        kinds = {name: self.successResultOf(self.store.run(get_package, name)).kind
                 for name in ("wnpp", "dpkg", "ghost")}
        self.assertEqual(kinds, {"wnpp": "pseudo", "dpkg": "source", "ghost": "source"})
        self.assertEqual((result.tallies["packages"].created,
                          result.tallies["packages"].updated), (2, 2))
        self.assertEqual((result.tallies["subscriptions"].created,
                          result.tallies["subscriptions"].updated), (3, 0))

    def test_bad_rows_do_not_stop_the_import(self):
        """An export with bad rows imports its good rows and reports the rest."""
        result = self.imported(base_export() + [member(3, JANE, 99), subscription(9, 1, 99)])
        self.assertEqual(result.tallies["subscriptions"].created, 4)
        self.assertEqual(sum(result.problems.values()), 2)
        lines = result.summary()
        self.assertIn("skipped or adjusted, by reason:", lines)
        self.assertIn("         1  core.teammembership: row skipped: its team is unknown or "
                      "was skipped", lines)


class CaseVariantTests(_Imports, SynchronousTestCase):
    """Spellings that differ only in case: distro-tracker's two addresses, our one."""

    def rows(self):
        return [
            keyword(DEFAULT, "default"), keyword(BTS, "bts"), keyword(VCS, "vcs", False),
            package(DPKG, "dpkg", source=True), package(APT, "apt", source=True),
            address(1, "Jane@Example.net"), address(2, "jane@example.NET"),
            settings(1, 1, [DEFAULT, BTS]), settings(2, 2, [VCS]),
            subscription(1, 1, DPKG), subscription(2, 2, DPKG, keywords=[BTS]),
            subscription(3, 2, APT),
            team(1, "core", [DPKG, APT]),
            member(1, 1, 1, muted=True), member(2, 2, 1),
            specifics(1, 2, APT, muted=True),
        ]

    def test_one_address_receives_what_either_spelling_did(self):
        """The merged address gets each keyword either spelling received, once."""
        result = self.imported(self.rows())
        self.assertEqual(result.tallies["addresses"].total, 1)
        self.assertEqual(dict(result.problems), {
            ("django_email_accounts.useremail",
             "merged with an address that differs only in case"): 1})
        self.assertEqual(self.reach("dpkg", "default"), (["Jane@Example.net"], []))
        self.assertEqual(self.reach("dpkg", "vcs"), ([], ["Jane@Example.net"]))
        self.assertEqual(self.reach("apt", "vcs"), (["Jane@Example.net"], []))
        self.assertEqual(self.reach("apt", "bts"), ([], []))
        self.assertEqual(self.reach("apt", "default"), ([], []))
        defaults = self.successResultOf(self.store.run(default_keywords, "jane@example.net"))
        self.assertEqual(set(defaults), {"default", "bts", "vcs"})
        self.assertFalse(self.imported(self.rows()).changed)


class BatchingTests(_Imports, SynchronousTestCase):
    def test_statements_per_batch_do_not_grow_with_rows(self):
        """Thousands of subscriptions take a handful of statements, not one per row."""
        rows = [keyword(DEFAULT, "default"), keyword(BTS, "bts")]
        rows += [package(i, f"pkg{i}", source=True) for i in range(1, 201)]
        for i in range(1, 1001):
            rows += [address(i, f"user{i}@example.org"), settings(i, i, [DEFAULT])]
            rows += [subscription(i * 10 + j, i, 1 + (i * 7 + j) % 200,
                                  keywords=[BTS] if j == 0 else None) for j in range(5)]
        rows += [team(1, "big", list(range(1, 201)))]
        rows += [member(i, i, 1, keywords=[BTS] if i % 2 else None) for i in range(1, 1001)]
        export = read_export(rows)
        statements = []
        real_run = self.store.run

        def counting_run(program, *args):
            def counted():
                gen = program(*args)
                result = None
                try:
                    op = next(gen)
                    while True:
                        statements.append(program.__name__)
                        result = yield op
                        op = gen.send(result)
                except StopIteration as stop:
                    return stop.value
            return real_run(counted)

        self.store.run = counting_run
        result = self.successResultOf(import_export(self.store, export, batch_rows=10_000))
        self.assertEqual(result.tallies["subscriptions"].created, 5000)
        self.assertEqual(result.tallies["memberships"].created, 1000)
        self.assertLess(statements.count("import_addresses"), 40)
        self.assertLess(statements.count("import_teams"), 40)
        self.assertEqual(len(self.successResultOf(self.store.run(subscribers_of, "pkg8"))), 25)


class ExportFileTests(SynchronousTestCase):
    def write(self, data) -> str:
        path = os.path.join(os.path.abspath(self.mktemp()) + ".json")
        with open(path, "w") as f:
            json.dump(data, f)
        return path

    def test_export_is_recognised(self):
        """A dumpdata list is read as an export; other lists are refused."""
        dump = read_dump(self.write(base_export()))
        self.assertEqual((dump.format, sorted(dump.export.teams)), ("export", ["core-team"]))
        e = self.assertRaises(DumpError, read_dump, self.write([1, 2]))
        self.assertIn("not distro-tracker's dumpdata export", str(e))


_SCRIPT = "import sys; from trackermail import cli; sys.exit(cli.main(sys.argv[1:]))"


class ExportCommandTests(SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.db = f"sqlite:///{self.dir}/t.sqlite"
        self.assertEqual(self.cli("migrate").returncode, 0)
        self.path = os.path.join(self.dir, "dump.json")
        with open(self.path, "w") as f:
            json.dump(base_export() + [subscription(9, 1, 99)], f)

    def cli(self, *args, stderr=subprocess.PIPE):
        return subprocess.run([sys.executable, "-c", _SCRIPT, "--database", self.db, *args],
                              stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=120)

    def test_import_then_import_again(self):
        """The command imports, warns about the bad row, and a rerun says nothing changed."""
        result = self.cli("import-distro-tracker", self.path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr.splitlines(), [
            "trackermail: warning: core.subscription 9: row skipped: its package is unknown "
            "or was skipped"])
        lines = result.stdout.splitlines()
        self.assertRegex(lines[0], r"^imported .*dump\.json \(distro-tracker export\) in "
                                   r"\d+\.\ds:$")
        self.assertIn("  subscriptions:                           4 in the export: 4 created, "
                      "0 changed, 0 unchanged (1 of them inactive)", lines)
        self.assertIn("         1  core.subscription: row skipped: its package is unknown or "
                      "was skipped", lines)
        again = self.cli("import-distro-tracker", self.path)
        self.assertEqual(again.stdout.splitlines()[-1],
                         "nothing changed: the store already holds all of it")
        dump = json.loads(self.cli("dump-subscribers").stdout)
        self.assertEqual(dump["dpkg"], ["jane@example.net"])

    def test_progress_bar_on_a_terminal(self):
        """On a terminal the export import draws a progress bar that ends at 100%."""
        result, output = on_terminal(lambda fd: self.cli("import-distro-tracker", self.path, stderr=fd))
        self.assertEqual(result.returncode, 0)
        self.assertIn(b"[" + b"#" * 40 + b"] 100.0%", output)


class _RealStoreExportMixin:
    """The export import on a real backend (upserts, chunked IN lists)."""

    async def test_import_twice_and_merge_case_variants(self):
        """The import and a no-op rerun, with merged spellings, on this backend."""
        store = await self.make_store()
        export = read_export(base_export() + [
            address(10, "JANE@example.net"), settings(10, 10, [VCS]),
            subscription(20, 10, DPKG, keywords=[VCS])])
        first = await import_export(store, export, batch_rows=3, now=1.0)
        self.assertTrue(first.changed)
        self.assertFalse((await import_export(store, export, batch_rows=3, now=2.0)).changed)
        direct, team = await store.run(recipients_for, "apt", "vcs")
        self.assertEqual((direct, team), (["jane@example.net"],
                                          [("carol@example.com", "core-team")]))
        direct, team = await store.run(recipients_for, "dpkg", "vcs")
        self.assertEqual((direct, team), (["jane@example.net"], []))
        self.assertEqual(set(await store.run(subscription_keywords, "jane@example.net", "dpkg")),
                         {"default", "bts", "vcs"})
        self.assertEqual(await store.run(bounce_stats, "bob@example.org"),
                         [BounceDay("2024-05-01", 3, 3)])

    async def test_tens_of_thousands_of_subscriptions(self):
        """A big export imports completely on this backend."""
        rows = [keyword(DEFAULT, "default"), keyword(BTS, "bts")]
        rows += [package(i, f"pkg{i}", source=True) for i in range(1, 2001)]
        for i in range(1, 6001):
            rows += [address(i, f"user{i}@example.org"), settings(i, i, [DEFAULT])]
            rows += [subscription(i * 10 + j, i, 1 + (i * 7 + j) % 2000,
                                  keywords=[BTS] if j == 0 else None) for j in range(5)]
        store = await self.make_store()
        result = await import_export(store, read_export(rows), now=1.0)
        self.assertEqual(result.tallies["subscriptions"].created, 30_000)
        self.assertEqual(len(await store.run(subscribers_of, "pkg8")), 15)


class SQLiteExportTests(_RealStoreExportMixin, TestCase):
    async def make_store(self):
        return await make_sqlite_store(self)


class PostgresExportTests(_RealStoreExportMixin, TestCase):
    async def make_store(self):
        return await make_pg_store(self)

