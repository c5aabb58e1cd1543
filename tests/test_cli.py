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


def migrated_config(case) -> tuple[str, str]:
    """
    A fresh directory holding a config (SQLite store and spool in it) whose
    store is migrated: C{(directory, config path)}.
    """
    d = os.path.abspath(case.mktemp())
    os.makedirs(d)
    config = os.path.join(d, "t.toml")
    with open(config, "w") as f:
        f.write(f'[tracker]\nfqdn = "tracker.example.org"\nsecret_key = "k"\n'
                f'[database]\nurl = "sqlite:///{d}/t.sqlite"\n'
                f'[spool]\npath = "{d}/spool"\n')
    result = run("--config", config, "migrate")
    case.assertEqual(result.returncode, 0, result.stderr)
    return d, config


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
        self.assertEqual(self.cli("add-package", "dpkg").returncode, 0)
        self.assertEqual(self.cli("subscribe", "dpkg", "Jane@Example.org").returncode, 0)
        self.cli("subscribe", "dpkg", "bob@example.org")
        result = self.cli("dump-subscribers")
        self.assertEqual(json.loads(result.stdout),
                         {"dpkg": ["bob@example.org", "Jane@Example.org"]})
        result = self.cli("unsubscribe-all", "jane@example.org")
        self.assertEqual(result.stdout, "jane@example.org unsubscribed from dpkg\n")

    def test_errors_are_one_line(self):
        """Unknown packages, teams and bad emails exit 1 with one line on stderr."""
        self.cli("add-package", "dpkg")
        for args, message in [
            (("dump-subscribers", "nope"), "trackermail: no package nope\n"),
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
        d, config = migrated_config(self)
        run("--config", config, "subscribe", "--create", "dpkg", "jane@example.org")
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


def twistd(*args, cwd=None, env=None):
    """Run twistd in the foreground; these all end on their own (errors)."""
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", *args], capture_output=True, text=True,
        timeout=60, cwd=cwd, env=dict(os.environ, **(env or {})))


TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
TAC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tracker.tac")


class TwistdErrorTests(SynchronousTestCase):
    """
    A tracker that cannot start says why in one line on stderr, exit 1: no
    traceback, no page of usage.
    """

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.base = ["tracker", "--fqdn", "t.example.org", "--dev",
                     "--database", f"sqlite:///{self.dir}/t.sqlite",
                     "--spool", f"{self.dir}/spool", "--lmtp", "tcp:0:interface=127.0.0.1"]

    def assertOneLine(self, result, line):
        self.assertEqual(result.returncode, 1, result.stderr)
        errors = [x for x in result.stderr.splitlines() if not x.startswith("trackermail: warning:")]
        self.assertEqual(errors, [line])
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertNotIn("Usage:", result.stdout + result.stderr)

    def test_bad_config_names_the_key(self):
        """A bad value in the file is one line naming the key, without usage."""
        path = os.path.join(self.dir, "bad.toml")
        with open(path, "w") as f:
            f.write("[outbound]\nstarttls = 'maybe'\n")
        self.assertOneLine(twistd("tracker", "--config", path, cwd=self.dir),
                           "trackermail: [tracker] fqdn: required (the domain the tracker "
                           "receives mail for)")

    def test_tac_bad_config_names_the_key(self):
        """twistd -ny tracker.tac with a bad file is the same one line."""
        path = os.path.join(self.dir, "bad.toml")
        with open(path, "w") as f:
            f.write('[tracker]\nfqdn = "t.example.org"\ndev = true\n[outbound]\n'
                    'starttls = "maybe"\n')
        result = subprocess.run([TWISTD, "-n", "--pidfile=", "-y", TAC], capture_output=True,
                                text=True, timeout=60, cwd=self.dir,
                                env=dict(os.environ, TRACKERMAIL_CONFIG=path))
        self.assertOneLine(result, "trackermail: [outbound] starttls: expected no, "
                                   "opportunistic or required, got 'maybe'")

    def test_port_in_use(self):
        """A port already in use names the key and the endpoint."""
        import socket

        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        result = twistd(*self.base, "--smtp", endpoint, cwd=self.dir)
        self.assertOneLine(result, f"trackermail: [smtp] listen: cannot listen on {endpoint}: "
                                   "Address already in use")

    def test_bad_endpoints(self):
        """Endpoints that cannot work are refused before anything starts."""
        for endpoint, line in [
            ("tcp:99999", "trackermail: [smtp] listen: bad endpoint 'tcp:99999': "
                          "port 99999 is not between 0 and 65535"),
            ("20283", "trackermail: [smtp] listen: bad endpoint '20283': Unknown endpoint "
                      "type: '20283' (a port alone is not an endpoint: write tcp:20283)"),
        ]:
            self.assertOneLine(twistd(*self.base, "--smtp", endpoint, cwd=self.dir), line)
        self.assertFalse(os.path.exists(f"{self.dir}/spool"), "nothing may start")

    def test_unix_socket_in_a_missing_directory(self):
        """A UNIX socket that cannot be made is one line with the reason."""
        result = twistd(*self.base, "--smtp", "unix:/nonexistent/dir/smtp", cwd=self.dir)
        self.assertOneLine(result, "trackermail: [smtp] listen: cannot listen on "
                                   "unix:/nonexistent/dir/smtp: No such file or directory")


class ConfigDiscoveryTests(SynchronousTestCase):
    """
    trackermail, twistd -n tracker and the .tac find their file the same
    way: --config, then $TRACKERMAIL_CONFIG, then ./tracker.toml. Each file
    here names a bad endpoint, so the error proves which one was read.
    """

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        env = {k: v for k, v in os.environ.items() if k != "TRACKERMAIL_CONFIG"}
        self.env = env

    def write(self, name, port):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(f'[tracker]\nfqdn = "t.example.org"\ndev = true\n'
                    f'[database]\nurl = "sqlite:///{self.dir}/{name}.sqlite"\n'
                    f'[spool]\npath = "{self.dir}/spool"\n'
                    f'[smtp]\nlisten = ["tcp:{port}"]\n')
        return path

    def run_all(self, *args, env=None):
        env = dict(self.env, **(env or {}))
        runs = {
            "twistd": subprocess.run([TWISTD, "-n", "--pidfile=", "tracker", *args],
                                     capture_output=True, text=True, timeout=60,
                                     cwd=self.dir, env=env),
            "tac": subprocess.run([TWISTD, "-n", "--pidfile=", "-y", TAC],
                                  capture_output=True, text=True, timeout=60,
                                  cwd=self.dir, env=env),
            "cli": subprocess.run([sys.executable, "-m", "trackermail.cli", *args, "migrate"],
                                  capture_output=True, text=True, timeout=60,
                                  cwd=self.dir, env=env),
        }
        return {name: r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.stdout
                for name, r in runs.items()}

    def test_local_file_then_environment_then_option(self):
        """./tracker.toml is read, $TRACKERMAIL_CONFIG beats it, --config beats both."""
        self.write("tracker.toml", 70001)
        found = self.run_all()
        self.assertIn("'tcp:70001'", found["twistd"])
        self.assertIn("'tcp:70001'", found["tac"])
        self.assertTrue(os.path.exists(f"{self.dir}/tracker.toml.sqlite"), found["cli"])

        named = self.write("named.toml", 70002)
        found = self.run_all(env={"TRACKERMAIL_CONFIG": named})
        self.assertIn("'tcp:70002'", found["twistd"])
        self.assertIn("'tcp:70002'", found["tac"])
        self.assertTrue(os.path.exists(f"{self.dir}/named.toml.sqlite"), found["cli"])

        option = self.write("option.toml", 70003)
        runs = subprocess.run([TWISTD, "-n", "--pidfile=", "tracker", "--config", option],
                              capture_output=True, text=True, timeout=60, cwd=self.dir,
                              env=dict(self.env, TRACKERMAIL_CONFIG=named))
        self.assertIn("'tcp:70003'", runs.stderr)

    def test_cli_options_before_or_after_the_command(self):
        """--config and --database work on either side of the command."""
        path = self.write("c.toml", 2525)
        for args in (["--config", path, "stats"], ["stats", "--config", path]):
            result = subprocess.run([sys.executable, "-m", "trackermail.cli", *args],
                                    capture_output=True, text=True, timeout=60, cwd=self.dir,
                                    env=self.env)
            self.assertEqual(result.stderr, f"trackermail: no database at {self.dir}/c.toml"
                                            ".sqlite: run 'trackermail migrate' first\n")
        db = f"sqlite:///{self.dir}/other.sqlite"
        self.assertEqual(run("migrate", "--database", db).returncode, 0)
        result = run("--config", path, "stats", "--database", db)
        self.assertEqual(result.returncode, 0, result.stderr)


class SpoolCommandTests(SynchronousTestCase):
    def setUp(self):
        self.dir, self.config = migrated_config(self)

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

    def test_deliver_exit_codes_tell_the_mta_what_to_do(self):
        """deliver exits 67 for addresses not ours, 65 for input that is no mail."""
        mail = b"Subject: hi\n\nbody\n"
        for recipient, stdin, code, message in [
            ("nobody@tracker.example.org", mail, 67,
             b"trackermail: nobody@tracker.example.org: not an address of this tracker "
             b"(User unknown)\n"),
            ("control@elsewhere.example.net", mail, 67,
             b"trackermail: control@elsewhere.example.net: not an address of this tracker "
             b"(Relay access denied)\n"),
            ("control@tracker.example.org", b"", 65,
             b"trackermail: empty message on standard input\n"),
            ("control@tracker.example.org", b"\x00\x01 binary junk\n", 65,
             b"trackermail: standard input is not a mail message (it does not start with "
             b"a header)\n"),
        ]:
            result = self.cli("deliver", recipient, stdin=stdin)
            self.assertEqual((result.returncode, result.stderr), (code, message))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "spool", "failed")))
        self.assertEqual(os.listdir(os.path.join(self.dir, "spool", "new"))
                         if os.path.exists(os.path.join(self.dir, "spool", "new")) else [], [])
        mbox = self.cli("deliver", "dispatch+dpkg@tracker.example.org",
                        stdin=b"From a@example.net Mon Jan  1 00:00:00 2024\n" + mail)
        self.assertEqual(mbox.returncode, 0, mbox.stderr)

    def test_deliver_keeps_mail_queued_when_not_configured(self):
        """Without a recipient, an fqdn or a good config deliver exits 75: the MTA retries."""
        result = self.cli("deliver", stdin=b"Subject: x\n\nx\n", env={"RECIPIENT": ""})
        self.assertEqual((result.returncode, result.stderr),
                         (75, b"trackermail: no recipient: give one, or set RECIPIENT\n"))
        result = subprocess.run(
            [sys.executable, "-m", "trackermail.cli", "--database",
             f"sqlite:///{self.dir}/t.sqlite", "deliver", "control@tracker.example.org"],
            input=b"Subject: x\n\nx\n", capture_output=True, timeout=120, cwd=self.dir)
        self.assertEqual((result.returncode, result.stderr),
                         (75, b"trackermail: [tracker] fqdn: required to tell our addresses "
                              b"from others\n"))
        bad = os.path.join(self.dir, "bad.toml")
        with open(bad, "w") as f:
            f.write("[spool]\npath = 5\n")
        result = subprocess.run(
            [sys.executable, "-m", "trackermail.cli", "--config", bad, "deliver",
             "control@tracker.example.org"],
            input=b"Subject: x\n\nx\n", capture_output=True, timeout=120)
        self.assertEqual((result.returncode, result.stderr),
                         (75, b"trackermail: [spool] path: expected a string, got 5\n"))

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
