"""
The trackermail admin command, run as a user would: a subprocess.
"""

import gzip
import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from trackermail.sources import read_index


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "trackermail.cli", *args],
        capture_output=True, text=True, cwd=cwd, timeout=120,
    )


class CLITests(SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.db = f"sqlite:///{self.dir}/t.sqlite"
        self.assertEqual(run("--database", self.db, "migrate").returncode, 0)

    def cli(self, *args):
        return run("--database", self.db, *args)

    def test_migrate_is_idempotent(self):
        """migrate reports the schema version and can run again."""
        from trackermail.store.schema import latest_version

        result = self.cli("migrate")
        self.assertEqual((result.returncode, result.stdout),
                         (0, f"schema version {latest_version()}\n"))

    def test_subscribe_and_dump(self):
        """subscribe then dump-subscribers prints distro-tracker's JSON shape."""
        self.assertEqual(self.cli("subscribe", "dpkg", "Jane@Example.org").returncode, 0)
        self.cli("subscribe", "dpkg", "bob@example.org")
        result = self.cli("dump-subscribers")
        self.assertEqual(json.loads(result.stdout),
                         {"dpkg": ["bob@example.org", "Jane@Example.org"]})
        result = self.cli("unsubscribe-all", "jane@example.org")
        self.assertEqual(result.stdout, "jane@example.org unsubscribed from dpkg\n")

    def test_errors_are_one_line(self):
        """Unknown packages, teams and bad emails exit 1 with one line on stderr."""
        for args, message in [
            (("dump-subscribers", "nope"), 'trackermail: no package "nope"\n'),
            (("team-add-package", "noteam", "dpkg"), 'trackermail: no team "noteam"\n'),
            (("subscribe", "dpkg", "not-an-email"),
             'trackermail: "not-an-email" is not a valid email address\n'),
        ]:
            result = self.cli(*args)
            self.assertEqual((result.returncode, result.stderr), (1, message))

    def test_usage_error(self):
        """A missing argument is a usage error, exit 2."""
        self.assertEqual(self.cli("subscribe").returncode, 2)

    def test_bad_config_file(self):
        """A bad configuration file is a one-line error naming the key."""
        path = os.path.join(self.dir, "bad.toml")
        with open(path, "w") as f:
            f.write("[limits]\nmax_message_size = 'big'\n")
        result = run("--config", path, "stats")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr,
                         "trackermail: [limits] max_message_size: expected an integer,"
                         " got 'big'\n")

    def test_teams_and_packages(self):
        """add-package, add-team and team-add-package build a team."""
        self.assertEqual(self.cli("add-package", "dpkg", "--binary", "dpkg-dev").returncode, 0)
        self.assertEqual(self.cli("add-team", "dpkg-team", "--name", "dpkg",
                                  "--owner", "o@example.org").returncode, 0)
        result = self.cli("team-add-package", "dpkg-team", "dpkg")
        self.assertEqual(result.stdout, "team dpkg-team has package dpkg\n")
        stats = self.cli("stats").stdout
        self.assertIn("packages        1\n", stats)
        self.assertIn("teams           1\n", stats)

    def test_import_sources_gz(self):
        """import-sources reads a gzipped Sources index and prints a summary."""
        path = os.path.join(self.dir, "Sources.gz")
        with gzip.open(path, "wt") as f:
            for i in range(300):
                f.write(f"Package: src{i}\nBinary: bin{i}, bin{i}-doc\nVersion: 1.0\n"
                        f"Files:\n abc 12 src{i}.dsc\n\n")
        result = self.cli("import-sources", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout,
                         r"^imported 300 source packages and 600 binary mappings "
                         r"from 300 paragraphs in \d+\.\ds\n$")


class ReadIndexTests(SynchronousTestCase):
    def test_packages_index(self):
        """A Packages paragraph maps the binary to its Source (version stripped)."""
        import io

        data = (b"Package: libfoo1\nSource: foo (1.2-1)\nVersion: 1.2-1+b1\n\n"
                b"Package: bar\nVersion: 2\n\n"
                b"Package: baz\nBinary: baz,\n libbaz1, baz-dev\n")
        self.assertEqual(list(read_index(io.BytesIO(data))),
                         [("foo", ["libfoo1"]), ("bar", ["bar"]),
                          ("baz", ["baz", "libbaz1", "baz-dev"])])
