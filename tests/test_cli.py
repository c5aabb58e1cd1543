"""
The trackermail admin command, run as a user would: a subprocess.
"""

import gzip
import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from trackermail.ingress.spool import open_message
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


class ProcessCommandTests(SynchronousTestCase):
    def test_process_files_once(self):
        """process runs mail files through the pipeline and reports each outcome."""
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        config = os.path.join(d, "t.toml")
        with open(config, "w") as f:
            f.write(f'[tracker]\nfqdn = "tracker.example.org"\nsecret_key = "k"\n'
                    f'[database]\nurl = "sqlite:///{d}/t.sqlite"\n'
                    f'[spool]\npath = "{d}/spool"\n')
        self.assertEqual(run("--config", config, "migrate").returncode, 0)
        run("--config", config, "subscribe", "dpkg", "jane@example.org")
        good = os.path.join(d, "good.eml")
        with open(good, "wb") as f:
            f.write(b"Delivered-To: dispatch+dpkg_bts@tracker.example.org\n"
                    b"From: a@example.net\nSubject: bug\n\nbody\n")
        bad = os.path.join(d, "bad.eml")
        with open(bad, "wb") as f:
            f.write(b"From: a@example.net\nSubject: no delivery address\n\nbody\n")
        result = run("--config", config, "process", good, bad)
        self.assertEqual(result.returncode, 1)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], f"{good}: forwarded to 1 recipients")
        self.assertTrue(lines[1].startswith(f"{bad}: failed: "))
        self.assertTrue(os.path.exists(good), "process must not delete the user's files")
        again = run("--config", config, "process", good)
        self.assertEqual(again.stdout, f"{good}: duplicate already processed\n")


class PluginTests(SynchronousTestCase):
    def test_twistd_finds_the_plugin(self):
        """`twistd tracker --help` lists the tracker's options."""
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        result = subprocess.run([twistd, "tracker", "--help"], capture_output=True,
                                text=True, timeout=60, cwd="/")
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in ("--config=", "--fqdn=", "--database=", "--smtp=", "--lmtp=",
                       "--smarthost=", "--dev"):
            self.assertIn(option, result.stdout)

    def test_bad_config_is_one_line_usage_error(self):
        """twistd with a bad config file names the key instead of a traceback."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("[outbound]\nstarttls = 'maybe'\n")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        result = subprocess.run([twistd, "-n", "tracker", "--config", path],
                                capture_output=True, text=True, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("[tracker] fqdn: required", result.stdout + result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)


class SpoolCommandTests(SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.config = os.path.join(self.dir, "t.toml")
        with open(self.config, "w") as f:
            f.write(f'[tracker]\nfqdn = "tracker.example.org"\nsecret_key = "k"\n'
                    f'[database]\nurl = "sqlite:///{self.dir}/t.sqlite"\n'
                    f'[spool]\npath = "{self.dir}/spool"\n')
        run("--config", self.config, "migrate")

    def cli(self, *args, stdin=None, env=None):
        return subprocess.run(
            [sys.executable, "-m", "trackermail.cli", "--config", self.config, *args],
            input=stdin, capture_output=True, timeout=120,
            env=dict(os.environ, **(env or {})))

    def test_deliver_stores_durably(self):
        """deliver puts stdin into spool/new with its envelope and exits 0."""
        result = self.cli("deliver", "control@tracker.example.org",
                          stdin=b"Subject: hi\n\nbody\n", env={"SENDER": "a@example.net"})
        self.assertEqual(result.returncode, 0, result.stderr)
        [name] = os.listdir(os.path.join(self.dir, "spool", "new"))
        message = open_message(os.path.join(self.dir, "spool", "new", name))
        self.assertEqual(message.envelope.recipients, ("control@tracker.example.org",))
        self.assertEqual(message.envelope.sender, "a@example.net")
        self.assertEqual(message.head(1000), b"Subject: hi\n\nbody\n")

    def test_deliver_tempfails_when_the_spool_cannot_be_written(self):
        """deliver exits 75 (EX_TEMPFAIL) so the MTA retries when it cannot store."""
        os.makedirs(os.path.join(self.dir, "spool"))
        with open(os.path.join(self.dir, "spool", "tmp"), "w") as f:
            f.write("not a directory")
        result = self.cli("deliver", "control@tracker.example.org", stdin=b"Subject: x\n\nx\n")
        self.assertEqual(result.returncode, 75)
        self.assertIn(b"cannot store the message", result.stderr)

    def test_status_requeue_and_outbox(self):
        """status counts parked mail; requeue moves it back; outbox shows the queue."""
        failed = os.path.join(self.dir, "spool", "failed")
        os.makedirs(failed)
        with open(os.path.join(failed, "m1"), "wb") as f:
            f.write(b"Subject: x\n\nx\n")
        with open(os.path.join(failed, "m1.reason"), "w") as f:
            f.write("no delivery address\n")
        status = self.cli("status").stdout.decode()
        self.assertRegex(status, r"failed +1 ")
        self.assertIn("outbox queued 0", status)
        result = self.cli("requeue", "failed")
        self.assertEqual(result.stdout, b"requeued m1\n")
        self.assertEqual(os.listdir(os.path.join(self.dir, "spool", "new")), ["m1"])
        missing = self.cli("requeue", "broken", "nope")
        self.assertEqual(missing.returncode, 1)
        self.assertIn(b"not in broken/: nope", missing.stderr)
        self.assertIn(b"queued   0\n", self.cli("outbox").stdout)


class AnalyzeBounceCommandTests(SynchronousTestCase):
    def test_one_json_line_per_file(self):
        """analyze-bounce prints one JSON line per file with the documented keys."""
        here = os.path.dirname(os.path.abspath(__file__))
        dsn = os.path.join(here, "bounces", "fixtures", "postfix-dsn.eml")
        auto = os.path.join(here, "bounces", "fixtures", "autoreply.eml")
        result = run("analyze-bounce", dsn, auto)
        self.assertEqual(result.returncode, 0, result.stderr)
        first, second = [json.loads(line) for line in result.stdout.splitlines()]
        self.assertEqual(set(first), {"file", "bounce", "score", "hard", "recipients", "status", "details"})
        self.assertEqual((first["file"], first["bounce"]), (dsn, True))
        self.assertIn("alice@example.net", first["recipients"])
        self.assertEqual((second["bounce"], second["recipients"]), (False, []))
