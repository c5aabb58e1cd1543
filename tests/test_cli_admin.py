"""
The admin commands that list, remove and change packages, keywords, teams,
memberships and subscriptions: their store programs on every backend, and
the command as an operator runs it (a subprocess).
"""

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.stores import make_memory_store, make_pg_store, test_database_dsn
from trackermail.errors import StoreUnavailable, UnknownEmail, UnknownPackage
from trackermail.store.keywords import (
    builtin_keywords,
    keywords,
    remove_keyword,
    set_default_keywords,
)
from trackermail.store.news import add_news, news
from trackermail.store.packages import add_package, list_packages, remove_package
from trackermail.store.sqlite import SQLiteStore
from trackermail.store.subscriptions import (
    set_subscription_keywords,
    subscribe,
    subscribers_of,
    subscription_keywords,
)
from trackermail.store.teams import (
    add_team,
    join_team,
    list_teams,
    membership_keywords,
    remove_team,
    set_membership_keywords,
    set_membership_muted,
    team_add_package,
    team_members,
    team_packages,
    team_remove_package,
)


class AdminProgramsMixin:
    """The listing and removal programs; subclasses define C{make_store}."""

    async def setUp(self):
        self.store = await self.make_store()
        run = self.store.run
        await run(add_package, "dpkg", "source", ["dpkg-dev", "libdpkg-perl"])
        await run(add_package, "apt")
        await run(subscribe, "jane@example.org", "dpkg")
        await run(subscribe, "bob@example.org", "dpkg")
        await run(subscribe, "bob@example.org", "apt")
        await run(add_team, "qa", "QA team", "owner@example.org")
        await run(team_add_package, "qa", "dpkg")
        await run(team_add_package, "qa", "apt")
        await run(join_team, "qa", "m@example.org")
        await run(add_news, "dpkg", "Accepted dpkg 1.0", b"x", "text/plain", "Jane", 1.0)

    async def test_list_packages_with_counts(self):
        """list_packages gives every package with its subscribers and binaries."""
        found = await self.store.run(list_packages)
        self.assertEqual([(p.name, p.kind, p.subscribers, p.binaries) for p in found],
                         [("apt", "source", 1, 0), ("dpkg", "source", 2, 2)])
        self.assertEqual(await self.store.run(list_packages, "pseudo"), [])

    async def test_remove_package_takes_what_hangs_on_it(self):
        """Removing a package removes its subscriptions, team links and news only."""
        await self.store.run(set_membership_muted, "qa", "m@example.org", True, "dpkg")
        gone = await self.store.run(remove_package, "dpkg")
        self.assertEqual((gone.subscriptions, gone.teams, gone.news, gone.binaries),
                         (2, 1, 1, 2))
        self.assertEqual(await self.store.run(news, "dpkg"), [])
        self.assertEqual(await self.store.run(team_packages, "qa"), ["apt"])
        self.assertEqual(await self.store.run(subscribers_of, "apt"), ["bob@example.org"])
        [m] = [m for m in await self.store.run(team_members, "qa") if m.email == "m@example.org"]
        self.assertEqual(m.packages, {})
        failure = await self.assertFailure(self.store.run(remove_package, "dpkg"), UnknownPackage)
        self.assertEqual(str(failure), "no package dpkg")

    async def test_remove_keyword_from_every_set(self):
        """A removed keyword leaves the keyword sets that had it."""
        await self.store.run(set_subscription_keywords, "jane@example.org", "dpkg", "=",
                             ["vcs", "bts"])
        await self.store.run(set_default_keywords, "bob@example.org", "=", ["vcs"])
        self.assertEqual(await self.store.run(remove_keyword, "vcs"), 2)
        self.assertEqual(await self.store.run(subscription_keywords, "jane@example.org", "dpkg"),
                         frozenset({"bts"}))
        self.assertNotIn("vcs", [k.name for k in await self.store.run(keywords)])

    async def test_teams_listed_and_removed(self):
        """list_teams counts members and packages; remove_team drops the memberships."""
        [summary] = await self.store.run(list_teams)
        self.assertEqual((summary.team.slug, summary.team.owner, summary.members,
                          summary.packages), ("qa", "owner@example.org", 2, 2))
        self.assertTrue(await self.store.run(team_remove_package, "qa", "apt"))
        self.assertFalse(await self.store.run(team_remove_package, "qa", "apt"))
        self.assertEqual(await self.store.run(remove_team, "qa"), (2, 1))
        self.assertEqual(await self.store.run(list_teams), [])
        self.assertEqual(await self.store.run(subscribers_of, "apt"), ["bob@example.org"])

    async def test_member_settings_and_keywords(self):
        """team_members shows mutes and own keyword sets; membership_keywords resolves them."""
        run = self.store.run
        defaults = await run(membership_keywords, "qa", "m@example.org")
        self.assertIn("bts", defaults)
        await run(set_membership_keywords, "qa", "m@example.org", ["vcs"])
        await run(set_membership_keywords, "qa", "m@example.org", ["bts"], "dpkg")
        await run(set_membership_muted, "qa", "owner@example.org", True)
        self.assertEqual(await run(membership_keywords, "qa", "m@example.org"),
                         frozenset({"vcs"}))
        self.assertEqual(await run(membership_keywords, "qa", "m@example.org", "dpkg"),
                         frozenset({"bts"}))
        self.assertEqual(await run(membership_keywords, "qa", "m@example.org", "apt"),
                         frozenset({"vcs"}))
        members = {m.email: m for m in await run(team_members, "qa")}
        self.assertEqual((members["m@example.org"].muted, members["m@example.org"].keywords),
                         (False, ("vcs",)))
        self.assertEqual(members["m@example.org"].packages["dpkg"].keywords, ("bts",))
        self.assertEqual((members["owner@example.org"].muted,
                          members["owner@example.org"].keywords), (True, None))
        await self.assertFailure(run(membership_keywords, "qa", "x@example.org"), UnknownEmail)

    async def test_builtin_keywords_are_the_seeded_ones(self):
        """builtin_keywords reads the migration: the store starts with exactly those."""
        stored = await self.store.run(keywords)
        self.assertEqual(sorted((k.name, k.is_default, k.description) for k in stored),
                         sorted((k.name, k.is_default, k.description)
                                for k in builtin_keywords()))


class MemoryAdminProgramsTests(AdminProgramsMixin, TestCase):
    async def make_store(self):
        return make_memory_store(self)


class PostgresAdminProgramsTests(AdminProgramsMixin, TestCase):
    async def make_store(self):
        return await make_pg_store(self)


class ReadOnlySQLiteTests(TestCase):
    async def test_readonly_store_reads_and_never_writes(self):
        """A read-only SQLite store reads an existing file and refuses any write."""
        import sqlite3

        path = os.path.join(os.path.abspath(self.mktemp()), "t.sqlite")
        writer = SQLiteStore(path)
        await writer.start()
        await writer.migrate()
        await writer.run(add_package, "dpkg")
        await writer.close()
        reader = SQLiteStore(path, readonly=True)
        self.addCleanup(reader.close)
        await reader.start()
        self.assertEqual([p.name for p in await reader.run(list_packages)], ["dpkg"])
        await self.assertFailure(reader.run(add_package, "apt"), sqlite3.OperationalError)

    async def test_readonly_store_needs_the_file(self):
        """A read-only store on a missing file fails and creates no directory."""
        base = os.path.abspath(self.mktemp())
        store = SQLiteStore(os.path.join(base, "sub", "t.sqlite"), readonly=True)
        await self.assertFailure(store.start(), StoreUnavailable)
        self.assertFalse(os.path.exists(base))


def trackermail(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "trackermail.cli", *args],
        capture_output=True, text=True, cwd=cwd, timeout=120,
        env=dict(os.environ, **(env or {})),
    )


class CommandTests(SynchronousTestCase):
    """The commands as an operator types them."""

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.db = f"sqlite:///{self.dir}/t.sqlite"
        self.assertEqual(self.ok("migrate")[:14], "schema version")

    def cli(self, *args):
        return trackermail("--database", self.db, *args)

    def ok(self, *args):
        result = self.cli(*args)
        self.assertEqual((result.returncode, result.stderr), (0, ""), args)
        return result.stdout

    def fails(self, *args, code=1):
        result = self.cli(*args)
        self.assertEqual(result.returncode, code, result.stderr)
        self.assertEqual(result.stdout, "")
        return result.stderr

    def test_unknown_packages_need_create(self):
        """subscribe refuses a package nobody created unless --create."""
        self.assertEqual(self.fails("subscribe", "zzz", "x@example.org"),
                         "trackermail: no package zzz (use --create to create it)\n")
        self.assertEqual(self.ok("list-packages"), "")
        self.assertEqual(self.ok("subscribe", "--create", "zzz", "x@example.org"),
                         "x@example.org subscribed to zzz\n")
        self.assertEqual(json.loads(self.ok("dump-subscribers", "zzz")),
                         {"zzz": ["x@example.org"]})
        self.ok("add-package", "dpkg", "--binary", "dpkg-dev")
        self.assertEqual(self.fails("subscribe", "dpkg-dev", "x@example.org"),
                         "trackermail: no package dpkg-dev (dpkg-dev is a binary package of "
                         "dpkg; use --create to create it)\n")
        for args in (("unsubscribe", "nope", "x@example.org"), ("news", "nope"),
                     ("mute", "qa", "x@example.org", "--package", "nope"),
                     ("remove-package", "nope")):
            self.assertEqual(self.fails(*args), "trackermail: no package nope\n", args)

    def test_packages_listed_and_removed(self):
        """list-packages prints one name per line (or JSON); remove-package says what went."""
        self.ok("add-package", "dpkg", "--binary", "dpkg-dev")
        self.ok("add-package", "general", "--pseudo")
        self.ok("subscribe", "dpkg", "jane@example.org")
        self.assertEqual(self.ok("list-packages"), "dpkg\ngeneral\n")
        self.assertEqual(self.ok("list-packages", "--kind", "pseudo"), "general\n")
        self.assertEqual(json.loads(self.ok("list-packages", "--json"))[0],
                         {"name": "dpkg", "kind": "source", "subscribers": 1, "binaries": 1})
        self.assertEqual(self.ok("remove-package", "dpkg"),
                         "removed package dpkg with 1 subscription, 0 team links, "
                         "0 news items and 1 binary mapping\n")
        self.assertEqual(json.loads(self.ok("dump-subscribers")), {})

    def test_keywords_listed_changed_and_removed(self):
        """list-keywords shows defaults; set-keywords edits like the control bot."""
        listing = self.ok("list-keywords").splitlines()
        self.assertEqual(len(listing), len(builtin_keywords()))
        self.assertIn("bts               default  All bug reports and associated discussions",
                      listing)
        self.assertIn("vcs               -        Commit notices of the VCS repository "
                      "associated to the package", listing)
        self.ok("add-package", "dpkg")
        self.ok("subscribe", "dpkg", "jane@example.org")
        self.assertEqual(self.ok("set-keywords", "jane@example.org", "--package", "dpkg",
                                 "=", "bts", "vcs"),
                         "jane@example.org keywords for dpkg: bts, vcs\n")
        self.assertEqual(self.ok("set-keywords", "jane@example.org", "--package", "dpkg",
                                 "-", "bts"),
                         "jane@example.org keywords for dpkg: vcs\n")
        self.assertEqual(self.ok("set-keywords", "jane@example.org", "=", "summary"),
                         "jane@example.org keywords (default): summary\n")
        self.assertEqual(self.ok("show-keywords", "jane@example.org"), "summary\n")
        self.assertEqual(self.fails("set-keywords", "jane@example.org", "+", "nope", "vcs"),
                         "trackermail: no keyword nope (list-keywords shows them)\n")
        self.assertIn("give [+|-|=] and the keywords",
                      self.fails("set-keywords", "jane@example.org", "+", code=2))
        self.assertEqual(self.fails("remove-keyword", "vcs"),
                         "trackermail: vcs is a built-in keyword (classification uses it): "
                         "use --force to remove it anyway\n")
        self.assertEqual(self.ok("remove-keyword", "vcs", "--force"),
                         "removed keyword vcs (it was in 1 keyword set)\n")
        self.assertEqual(self.ok("show-keywords", "jane@example.org", "--package", "dpkg"), "")

    def test_teams_and_members(self):
        """Teams are listed, members added, muted, listed and removed, teams removed."""
        self.ok("add-package", "dpkg")
        self.ok("add-team", "qa", "--name", "QA team", "--owner", "o@example.org")
        self.ok("add-team", "secret", "--name", "Hidden", "--owner", "o@example.org",
                "--private")
        self.assertEqual(self.ok("team-add-member", "qa", "m@example.org"),
                         "m@example.org joined qa\n")
        self.assertEqual(self.ok("team-add-member", "qa", "m@example.org"),
                         "m@example.org was already a member of qa\n")
        self.ok("team-add-package", "qa", "dpkg")
        self.assertEqual(self.ok("list-teams"),
                         "qa      2 members, 1 package  QA team\n"
                         "secret  1 member, 0 packages, private  Hidden\n")
        self.assertEqual(self.ok("mute", "qa", "o@example.org"), "muted o@example.org in qa\n")
        self.assertEqual(self.ok("mute", "qa", "m@example.org", "--package", "dpkg"),
                         "muted m@example.org in qa for dpkg\n")
        self.assertEqual(self.ok("team-members", "qa"),
                         "m@example.org  (muted for dpkg)\no@example.org  (muted)\n")
        self.ok("unmute", "qa", "o@example.org")
        self.assertEqual(self.ok("set-keywords", "m@example.org", "--team", "qa", "=", "vcs"),
                         "m@example.org keywords in team qa: vcs\n")
        [m, o] = json.loads(self.ok("team-members", "qa", "--json"))
        self.assertEqual(m, {"email": "m@example.org", "muted": False, "keywords": ["vcs"],
                             "packages": {"dpkg": {"muted": True, "keywords": None}}})
        self.assertEqual((o["email"], o["muted"]), ("o@example.org", False))
        self.assertEqual(self.fails("mute", "qa", "x@example.org"),
                         "trackermail: x@example.org is not a member of qa\n")
        self.assertEqual(self.ok("team-remove-member", "qa", "m@example.org"),
                         "m@example.org left qa\n")
        self.assertEqual(self.ok("team-remove-package", "qa", "dpkg"),
                         "team qa no longer has package dpkg\n")
        self.assertEqual(self.ok("remove-team", "qa"),
                         "removed team qa with 1 member and 0 packages\n")
        self.assertEqual(self.fails("team-members", "qa"), 'trackermail: no team "qa"\n')

    def test_unsubscribe(self):
        """unsubscribe removes one subscription and says when there was none."""
        self.ok("add-package", "dpkg")
        self.ok("subscribe", "dpkg", "jane@example.org")
        self.assertEqual(self.ok("unsubscribe", "dpkg", "jane@example.org"),
                         "jane@example.org unsubscribed from dpkg\n")
        self.assertEqual(self.ok("unsubscribe", "dpkg", "jane@example.org"),
                         "jane@example.org was not subscribed to dpkg\n")

    def test_version_and_usage(self):
        """--version prints the version; a bad command line is exit 2."""
        from importlib.metadata import version

        result = trackermail("--version")
        self.assertEqual((result.returncode, result.stdout),
                         (0, f"trackermail {version('trackermail')}\n"))
        self.assertEqual(self.cli("list-packages", "--bogus").returncode, 2)
        self.assertEqual(self.cli("no-such-command").returncode, 2)

    def test_closed_output_pipe_ends_quietly(self):
        """`trackermail list-packages | head -1` ends without a traceback or message."""
        index = os.path.join(self.dir, "Sources")
        with open(index, "w") as f:
            f.write("".join(f"Package: package-number-{i:05d}\n\n" for i in range(20000)))
        self.ok("import-sources", index)
        proc = subprocess.Popen(
            [sys.executable, "-m", "trackermail.cli", "--database", self.db, "list-packages"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = proc.stdout.readline()
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.stderr.close()
        self.assertEqual(proc.wait(timeout=120), 141)
        self.assertEqual((first, stderr), (b"package-number-00000\n", b""))


class ReadOnlyCommandTests(SynchronousTestCase):
    """Commands that only look never create a database or a directory."""

    def test_nothing_is_created(self):
        """stats and friends in an empty directory name the missing file and create nothing."""
        empty = os.path.abspath(self.mktemp())
        os.makedirs(empty)
        env = {"TRACKERMAIL_CONFIG": ""}
        for args in (["stats"], ["list-packages"], ["list-keywords"], ["list-teams"],
                     ["team-members", "qa"], ["dump-subscribers"], ["news"], ["outbox"],
                     ["status"], ["subscribe", "dpkg", "x@example.org"]):
            result = trackermail(*args, cwd=empty, env=env)
            self.assertEqual((result.returncode, result.stderr),
                             (1, "trackermail: no database at var/tracker.sqlite: "
                                 "run 'trackermail migrate' first\n"), args)
        self.assertEqual(os.listdir(empty), [])
        result = trackermail("--database", "sqlite:////nonexistent/dir/x.sqlite", "stats")
        self.assertEqual(result.stderr, "trackermail: no database at /nonexistent/dir/x.sqlite:"
                                        " run 'trackermail migrate' first\n")
        self.assertFalse(os.path.exists("/nonexistent"))


class PostgresCommandTests(SynchronousTestCase):
    def test_commands_on_postgresql(self):
        """The admin commands work the same on a PostgreSQL database."""
        from tests.support.stores import reset_pg_schema

        dsn = test_database_dsn()
        reset_pg_schema(dsn)
        steps = [
            (("migrate",), None),
            (("add-package", "dpkg"), None),
            (("subscribe", "dpkg", "jane@example.org"), None),
            (("add-team", "qa", "--name", "QA", "--owner", "o@example.org"), None),
            (("team-add-member", "qa", "m@example.org"), None),
            (("list-packages",), "dpkg\n"),
            (("team-members", "qa"), "m@example.org\no@example.org\n"),
            (("remove-package", "dpkg"), "removed package dpkg with 1 subscription, "
                                         "0 team links, 0 news items and 0 binary mappings\n"),
        ]
        for args, expected in steps:
            result = trackermail("--database", dsn, *args)
            self.assertEqual((result.returncode, result.stderr), (0, ""), args)
            if expected is not None:
                self.assertEqual(result.stdout, expected)
