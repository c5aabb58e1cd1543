"""
C{trackermail bounces}: recent bounces by destination domain and reason,
and the addresses closest to removal.
"""

import datetime
import json
import os

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.bounces.mails import BLOCKED, MAILBOX_FULL, USER_UNKNOWN, dsn
from tests.support.pipeline import FQDN, deliver, make_pipeline
from tests.test_cli import migrated_config, run
from trackermail.bounces import verp
from trackermail.cli_bounces import bounce_report, format_report
from trackermail.store.bounce_stats import record_sent
from trackermail.store.subscriptions import subscribe

DAY = 86400


class ReportTests(SynchronousTestCase):
    def setUp(self):
        self.processor, self.store, self.clock = make_pipeline(self)
        self.secret = self.processor.config.tracker.secret_key
        self.run = lambda program, *a: self.successResultOf(self.store.run(program, *a))
        for email in ("dead@example.net", "full@example.org", "jane@gmail.com"):
            self.run(subscribe, email, "dpkg")

    def bounce(self, rcpt, reply):
        day = datetime.datetime.fromtimestamp(self.clock.now, datetime.timezone.utc).date()
        self.run(record_sent, [rcpt], day.isoformat())
        deliver(self, self.processor, verp.encode(rcpt, day, self.secret, FQDN),
                dsn(rcpt, *reply))

    def history(self):
        # Ten days ago: outside a 7-day report.
        self.bounce("jane@gmail.com", BLOCKED)
        self.clock.now += 5 * DAY
        for _ in range(5):
            self.bounce("full@example.org", MAILBOX_FULL)
            self.clock.now += DAY
        self.clock.now -= 3 * DAY
        for _ in range(3):
            self.bounce("dead@example.net", USER_UNKNOWN)
            self.bounce("jane@gmail.com", BLOCKED)
            self.clock.now += DAY
        self.clock.now -= DAY - 600

    def report(self, **kwargs):
        return self.successResultOf(Deferred.fromCoroutine(bounce_report(
            self.store, self.processor.config, self.clock.now, **kwargs)))

    def test_table(self):
        """The report lists domains and reasons, then addresses closest to removal first."""
        self.history()
        self.assertEqual(format_report(self.report()), """\
Bounces since 2026-11-21 (7 days), by destination domain and reason:

domain       reason       group               hard  soft  first seen (UTC)  last seen (UTC)
example.org  mailboxfull  persistent-soft        5     0  2026-11-23 11:06  2026-11-27 11:06
example.net  userunknown  gone                   3     0  2026-11-25 11:06  2026-11-27 11:06
gmail.com    blocked      ours (refusing us)     3     0  2026-11-25 11:06  2026-11-27 11:06

Addresses whose latest mail days all bounced (removed at the threshold):

address           hard bounces  any bounces
dead@example.net      3/4 days    3/14 days
full@example.org      0/4 days    5/14 days
""")

    def test_json_and_domain(self):
        """--json gives the same data; --domain keeps one destination domain."""
        self.history()
        report = self.report(days=30, domain="gmail.com")
        self.assertEqual(report["domains"], [{
            "domain": "gmail.com", "reason": "blocked", "group": "ours", "hard": 4, "soft": 0,
            "first_seen": "2026-11-18 11:06", "last_seen": "2026-11-27 11:06",
            "diagnostic": "550 5.7.1 Service unavailable; Client host [192.0.2.1] blocked"
                          " using zen.spamhaus.org"}])
        self.assertEqual(report["addresses"], [])
        self.assertEqual(json.loads(json.dumps(report)), report)

    def test_nothing(self):
        """With no bounces, both parts say none."""
        self.assertEqual(format_report(self.report(days=1)), """\
Bounces since 2026-11-18 (1 days), by destination domain and reason:

  none

Addresses whose latest mail days all bounced (removed at the threshold):

  none
""")


class CommandTests(SynchronousTestCase):
    def test_bounces_command(self):
        """trackermail bounces shows a domain refusing us after a bounce was processed."""
        d, config = migrated_config(self)
        run("--config", config, "subscribe", "--create", "dpkg", "jane@refusing.example")
        today = datetime.datetime.now(datetime.timezone.utc).date()
        address = verp.encode("jane@refusing.example", today, "k", "tracker.example.org")
        mail = os.path.join(d, "bounce.eml")
        with open(mail, "wb") as f:
            f.write(f"Delivered-To: {address}\r\n".encode() + dsn("jane@refusing.example",
                                                                  *BLOCKED))
        result = run("--config", config, "process", mail)
        self.assertIn("refused refusing.example refuses our mail (blocked)", result.stdout)

        result = run("--config", config, "bounces")
        self.assertEqual(result.returncode, 0, result.stderr)
        line = [x for x in result.stdout.splitlines() if x.startswith("refusing.example")]
        self.assertEqual(len(line), 1, result.stdout)
        self.assertEqual(line[0].split()[:6],
                         ["refusing.example", "blocked", "ours", "(refusing", "us)", "1"])

        report = json.loads(run("--config", config, "bounces", "--json", "--days", "2").stdout)
        self.assertEqual([(r["domain"], r["reason"], r["hard"]) for r in report["domains"]],
                         [("refusing.example", "blocked", 1)])
        other = json.loads(run("--config", config, "bounces", "--json", "--domain",
                               "Other.Example").stdout)
        self.assertEqual((other["domain"], other["domains"]), ("other.example", []))

        bad = run("--config", config, "bounces", "--days", "0")
        self.assertEqual((bad.returncode, bad.stderr),
                         (1, "trackermail: --days must be at least 1\n"))
