"""
Importing distro-tracker subscriber dumps: the three formats, what is
skipped and why, idempotence, and the admin command as a user runs it.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.stores import make_memory_store, make_pg_store, make_sqlite_store
from tests.support.terminal import on_terminal
from trackermail.importer import (
    DumpError,
    ImportResult,
    detect_format,
    import_dump,
    parse_dump,
    read_dump,
)
from trackermail.store.packages import add_package, get_package
from trackermail.store.subscriptions import (
    dump_subscribers,
    subscribe,
    subscribers_of,
    subscriptions_of,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "distro-tracker")
EXPECTED = {
    "dpkg": ["jane@example.net", "Bob@Example.org"],
    "apt": ["jane@example.net"],
    "coreutils": [],
}


def fixture(name: str) -> str:
    return os.path.join(FIXTURES, name)


class ParseDumpTests(SynchronousTestCase):
    def write(self, data: bytes, name: str = "dump") -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_json_format(self):
        """The output of tracker_dump_subscribers --json is read as package -> emails."""
        self.assertEqual(parse_dump(fixture("subscribers.json")), EXPECTED)

    def test_plain_format(self):
        """The default 'pkg => [ a b ]' output is read, empty lists included."""
        self.assertEqual(parse_dump(fixture("subscribers.txt")), EXPECTED)

    def test_udd_format(self):
        """The --udd-format 'pkg<TAB>a, b' output is read, empty lists included."""
        self.assertEqual(parse_dump(fixture("subscribers-udd.txt")), EXPECTED)

    def test_format_is_detected(self):
        """Each format is recognised from its first line, whatever the file name."""
        for name, fmt in [("subscribers.json", "json"), ("subscribers.txt", "plain"),
                          ("subscribers-udd.txt", "udd")]:
            self.assertEqual(read_dump(fixture(name)).format, fmt, name)
        self.assertEqual(detect_format("\n  \n{}"), "json")
        self.assertEqual(detect_format("# comment\na\tb@c.d"), "udd")
        self.assertEqual(detect_format(""), "plain")
        self.assertIsNone(detect_format("hello world\n"))

    def test_compressed_dump(self):
        """A gzip-compressed dump is read like the plain file."""
        with open(fixture("subscribers-udd.txt"), "rb") as f:
            path = self.write(gzip.compress(f.read()), "dump.gz")
        self.assertEqual(parse_dump(path), EXPECTED)

    def test_bad_lines_are_skipped_with_their_line_number(self):
        """Unreadable lines are skipped, and each warning names the file and line."""
        warnings = []
        path = fixture("bad-lines.txt")
        mapping = parse_dump(path, warn=warnings.append)
        self.assertEqual(warnings, [
            f"{path}:2: expected 'PACKAGE => [ EMAIL ... ]'",
            f"{path}:5: expected 'PACKAGE => [ EMAIL ... ]'",
        ])
        # Invalid names and addresses are the import's business: kept here.
        self.assertEqual(mapping, {
            "dpkg": ["jane@example.net", "Bob@Example.org"],
            "apt": ["jane@example.net", "not-an-email"],
            "Bad_Name": ["carol@example.com"],
            "libc6": ["carol@example.com"],
        })

    def test_udd_line_without_tab_is_skipped(self):
        """A UDD line without a tab is skipped with its line number."""
        path = self.write(b"dpkg\ta@example.org\nno tab here\napt\tb@example.org, \n")
        dump = read_dump(path)
        self.assertEqual(dump.problems, [(2, "expected 'PACKAGE<TAB>EMAIL, EMAIL ...'")])
        self.assertEqual(dump.subscriptions,
                         {"dpkg": ["a@example.org"], "apt": ["b@example.org"]})

    def test_repeated_package_lines_merge(self):
        """A package listed twice keeps the addresses of both lines."""
        path = self.write(b"dpkg => [ a@example.org ]\ndpkg => [ b@example.org ]\n")
        self.assertEqual(parse_dump(path), {"dpkg": ["a@example.org", "b@example.org"]})

    def test_broken_json_is_an_error(self):
        """Truncated JSON is a one-line error naming the file."""
        path = self.write(b'{"dpkg": ["a@example.org"')
        e = self.assertRaises(DumpError, parse_dump, path)
        self.assertIn(path, str(e))
        self.assertIn("not valid JSON", str(e))

    def test_json_of_the_wrong_shape(self):
        """A JSON array is refused; a package whose value is not a list is skipped."""
        self.assertRaises(DumpError, parse_dump, self.write(b'["dpkg"]'))
        warnings = []
        path = self.write(b'{"dpkg": {"a": 1}, "apt": "a@example.org", "x1": [3]}')
        mapping = parse_dump(path, warn=warnings.append)
        self.assertEqual(mapping, {"apt": ["a@example.org"], "x1": ["3"]})
        self.assertEqual(warnings, [f'{path}: package "dpkg": expected a list of emails'])

    def test_unknown_format_and_missing_file(self):
        """Text in no known format and a missing file are errors, not crashes."""
        e = self.assertRaises(DumpError, parse_dump, self.write(b"Hello,\nworld\n"))
        self.assertIn("not a distro-tracker dump", str(e))
        missing = os.path.join(self.mktemp(), "nope.json")
        self.assertRaises(DumpError, parse_dump, missing)

    def test_undecodable_bytes(self):
        """Bytes that are not UTF-8 do not stop the parse."""
        path = self.write(b"dpkg => [ j\xe9r\xf4me@example.org a@example.org ]\n")
        mapping = parse_dump(path)
        self.assertEqual(mapping["dpkg"][1], "a@example.org")
        self.assertIn("\ufffd", mapping["dpkg"][0])


class ImportDumpTests(SynchronousTestCase):
    def setUp(self):
        self.store = make_memory_store(self)

    def imported(self, mapping, **kwargs) -> ImportResult:
        return self.successResultOf(import_dump(self.store, mapping, now=1000.0, **kwargs))

    def test_subscribes_every_address_active(self):
        """Every subscriber of the dump is subscribed, active, without confirmation."""
        result = self.imported(EXPECTED)
        self.assertEqual(result, ImportResult(2, 3, 0, 0))
        self.assertEqual(self.successResultOf(self.store.run(dump_subscribers)),
                         {"dpkg": ["Bob@Example.org", "jane@example.net"],
                          "apt": ["jane@example.net"]})
        self.assertEqual(self.successResultOf(self.store.run(subscriptions_of, "JANE@example.net")),
                         ["apt", "dpkg"])

    def test_second_run_creates_nothing(self):
        """Importing the same dump again creates nothing and counts what is there."""
        self.imported(EXPECTED)
        self.assertEqual(self.imported(EXPECTED), ImportResult(2, 0, 3, 0))
        stats = self.successResultOf(self.store.run(dump_subscribers))
        self.assertEqual(sum(len(v) for v in stats.values()), 3)

    def test_existing_subscriptions_and_packages_kept(self):
        """Existing subscribers count as present; a known package keeps its kind."""
        self.successResultOf(self.store.run(add_package, "dpkg"))
        self.successResultOf(self.store.run(subscribe, "bob@example.org", "dpkg"))
        self.assertEqual(self.imported(EXPECTED), ImportResult(2, 2, 1, 0))
        self.assertEqual(self.successResultOf(self.store.run(get_package, "dpkg")).kind, "source")

    def test_pending_subscription_becomes_active(self):
        """A subscription waiting for confirmation is activated by the import."""
        self.successResultOf(self.store.run(subscribe, "jane@example.net", "apt", active=False))
        self.assertEqual(self.imported({"apt": ["jane@example.net"]}), ImportResult(1, 1, 0, 0))
        self.assertEqual(self.successResultOf(self.store.run(subscribers_of, "apt")),
                         ["jane@example.net"])

    def test_case_variants_are_one_address(self):
        """The same address in two spellings is subscribed once."""
        result = self.imported({"dpkg": ["Jane@Example.net", "jane@example.NET"]})
        self.assertEqual(result, ImportResult(1, 1, 0, 0))
        self.assertEqual(self.successResultOf(self.store.run(subscribers_of, "dpkg")),
                         ["Jane@Example.net"])

    def test_invalid_entries_skipped_counted_and_reported(self):
        """Bad addresses and package names are skipped, counted and reported."""
        warnings = []
        result = self.imported({
            "dpkg": ["jane@example.net", "not-an-email", "a b@example.org"],
            "Bad_Name": ["carol@example.com", "dave@example.com"],
            "apt": ["still-bad"],
            "empty": [],
        }, warn=warnings.append)
        self.assertEqual(result, ImportResult(1, 1, 0, 4))
        self.assertEqual(len(warnings), 4)
        self.assertTrue(any('"Bad_Name" is not a valid package name' in w for w in warnings))
        self.assertTrue(any(w.startswith("dpkg: address skipped") and "not-an-email" in w
                            for w in warnings), warnings)
        self.assertEqual(self.successResultOf(self.store.run(dump_subscribers)),
                         {"dpkg": ["jane@example.net"]})

    def test_batches_report_progress(self):
        """Progress is reported after each batch with the packages done so far."""
        mapping = {f"pkg{i}": [f"u{i}@example.org"] for i in range(5)}
        seen = []
        result = self.imported(mapping, batch_size=2, progress=seen.append)
        self.assertEqual(seen, [2, 4, 5])
        self.assertEqual(result, ImportResult(5, 5, 0, 0))

    def test_progress_counts_skipped_packages(self):
        """Packages without subscribers advance the progress too, to the end."""
        mapping = {"aa": ["a@example.org"], "bb": [], "cc": ["c@example.org"], "dd": []}
        seen = []
        self.imported(mapping, batch_size=1, progress=seen.append)
        self.assertEqual(seen, [1, 3, 4])

    def test_many_packages_and_addresses(self):
        """Thousands of packages and shared addresses import completely, once."""
        mapping = {f"pkg{i:05d}": [f"user{(i * 7 + j) % 1500}@example.org" for j in range(3)]
                   for i in range(2500)}
        result = self.imported(mapping)
        self.assertEqual(result, ImportResult(2500, 7500, 0, 0))
        dump = self.successResultOf(self.store.run(dump_subscribers))
        self.assertEqual(len(dump), 2500)
        self.assertEqual(sorted(dump["pkg01234"]), sorted(mapping["pkg01234"]))
        self.assertEqual(self.imported(mapping), ImportResult(2500, 0, 7500, 0))


class _RealStoreImportMixin:
    """The import on a real backend (SQL text, chunked inserts, transactions)."""

    async def test_import_twice(self):
        """A dump imports on this backend, and a second run creates nothing."""
        store = await self.make_store()
        mapping = {f"pkg{i:04d}": [f"u{i % 300}@example.org", f"V{i % 7}@Example.org"]
                   for i in range(1200)}
        mapping["Bad_Name"] = ["x@example.org"]
        result = await import_dump(store, mapping, batch_size=500, now=5.0)
        self.assertEqual(result, ImportResult(1200, 2400, 0, 1))
        again = await import_dump(store, mapping, batch_size=500, now=6.0)
        self.assertEqual(again, ImportResult(1200, 0, 2400, 1))
        dump = await store.run(dump_subscribers, ["pkg0007"])
        self.assertEqual(dump, {"pkg0007": ["u7@example.org", "V0@Example.org"]})


class SQLiteImportTests(_RealStoreImportMixin, TestCase):
    async def make_store(self):
        return await make_sqlite_store(self)


class PostgresImportTests(_RealStoreImportMixin, TestCase):
    async def make_store(self):
        return await make_pg_store(self)


# Runs `trackermail ...`; registers the subcommand through cli.COMMANDS
# only while cli.py does not have it yet.
_RUNNER = """\
import contextlib, io, sys
from trackermail import cli, importer
try:
    with contextlib.redirect_stderr(io.StringIO()):
        cli.build_parser().parse_args(["import-distro-tracker", "x"])
except SystemExit:
    cli.COMMANDS["import-distro-tracker"] = (
        importer.cmd_import_distro_tracker, "import a distro-tracker subscriber dump",
        importer.configure_parser)
sys.exit(cli.main(sys.argv[1:]))
"""


class ImportCommandTests(SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.db = f"sqlite:///{self.dir}/t.sqlite"
        self.assertEqual(self.cli("migrate").returncode, 0)

    def cli(self, *args, stderr=subprocess.PIPE):
        return subprocess.run(
            [sys.executable, "-c", _RUNNER, "--database", self.db, *args],
            stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=120,
        )

    def test_import_and_import_again(self):
        """The command imports a dump, prints a summary, and a rerun adds nothing."""
        result = self.cli("import-distro-tracker", fixture("subscribers.json"))
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertRegex(result.stdout,
                         r"^imported 2 packages from .*subscribers\.json \(json format\): "
                         r"3 subscriptions created, 0 already present, 0 skipped "
                         r"\(0 invalid entries, 0 unreadable lines\) in \d+\.\ds\n$")
        dump = self.cli("dump-subscribers")
        self.assertEqual(json.loads(dump.stdout),
                         {"apt": ["jane@example.net"],
                          "dpkg": ["Bob@Example.org", "jane@example.net"]})
        again = self.cli("import-distro-tracker", fixture("subscribers-udd.txt"))
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("(udd format): 0 subscriptions created, 3 already present", again.stdout)

    def test_bad_lines_are_warned_with_line_numbers(self):
        """Skipped lines and entries are warned about on stderr; the rest is imported."""
        path = fixture("bad-lines.txt")
        result = self.cli("import-distro-tracker", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stderr.splitlines()
        self.assertIn(f"trackermail: warning: {path}:2: expected 'PACKAGE => [ EMAIL ... ]'",
                      lines)
        self.assertIn(f"trackermail: warning: {path}:5: expected 'PACKAGE => [ EMAIL ... ]'",
                      lines)
        self.assertTrue(any("not-an-email" in line for line in lines), lines)
        self.assertTrue(any("Bad_Name" in line for line in lines), lines)
        self.assertIn("3 packages", result.stdout)
        self.assertIn("4 subscriptions created", result.stdout)
        self.assertIn("4 skipped (2 invalid entries, 2 unreadable lines)", result.stdout)

    def test_unreadable_file_is_one_line_error(self):
        """A missing or broken file exits 1 with one line on stderr."""
        result = self.cli("import-distro-tracker", os.path.join(self.dir, "missing.json"))
        self.assertEqual(result.returncode, 1)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertTrue(result.stderr.startswith("trackermail: "), result.stderr)
        broken = os.path.join(self.dir, "broken.json")
        with open(broken, "w") as f:
            f.write('{"dpkg": [')
        result = self.cli("import-distro-tracker", broken)
        self.assertEqual(result.returncode, 1)
        self.assertIn("not valid JSON", result.stderr)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)

    def test_progress_bar_on_a_terminal(self):
        """On a terminal the command draws a progress bar that ends at 100%."""
        result, output = on_terminal(lambda fd: self.cli(
            "import-distro-tracker", fixture("subscribers.txt"), stderr=fd))
        self.assertEqual(result.returncode, 0)
        self.assertIn(b"100.0%", output)
        self.assertIn(b"[" + b"#" * 40 + b"]", output)
