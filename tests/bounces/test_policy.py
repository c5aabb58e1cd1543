"""
The bounce policy: counting bounces to signed VERP addresses and
unsubscribing addresses that bounce everything for several days.
"""

import datetime

from twisted.trial.unittest import SynchronousTestCase

from tests.bounces.mails import dsn
from tests.support.pipeline import FQDN, deliver, make_pipeline, outbox, parse
from trackermail.bounces import verp
from trackermail.bounces.policy import permanent_failure
from trackermail.store.bounce_stats import bounce_stats, record_sent
from trackermail.store.subscriptions import subscribe, subscriptions_of
from trackermail.store.teams import add_team, team_member_ids

DAY = 86400


class BouncePolicyTests(SynchronousTestCase):
    def setUp(self):
        self.processor, self.store, self.clock = make_pipeline(self)
        self.secret = self.processor.config.tracker.secret_key
        self.run = lambda program, *a: self.successResultOf(self.store.run(program, *a))
        self.run(subscribe, "dead@example.net", "dpkg")
        self.run(subscribe, "dead@example.net", "apt")
        self.run(add_team, "qa", "QA", "dead@example.net")

    def today(self) -> datetime.date:
        return datetime.datetime.fromtimestamp(self.clock.now, datetime.timezone.utc).date()

    def bounce(self, rcpt="dead@example.net", body=None, day=None, secret=None):
        address = verp.encode(rcpt, day or self.today(), secret or self.secret, FQDN)
        return deliver(self, self.processor, address, body or dsn(rcpt))

    def sent_today(self, email="dead@example.net"):
        self.run(record_sent, [email], self.today().isoformat())

    def test_hard_bounce_is_counted(self):
        """A hard bounce to a valid VERP address counts for that day."""
        self.sent_today()
        outcome = self.bounce()
        self.assertEqual(outcome.action, "counted")
        [day] = self.run(bounce_stats, "dead@example.net")
        self.assertEqual((day.sent, day.bounced), (1, 1))

    def test_soft_bounce_is_recorded_not_counted(self):
        """A soft bounce (4.x.x) does not count toward unsubscription."""
        self.sent_today()
        outcome = self.bounce(body=dsn("dead@example.net", "4.2.2", "Mailbox full"))
        self.assertEqual(outcome.action, "recorded")
        [day] = self.run(bounce_stats, "dead@example.net")
        self.assertEqual(day.bounced, 0)

    def test_forged_tag_is_ignored(self):
        """A bounce with a tag made with another secret changes nothing."""
        self.sent_today()
        outcome = self.bounce(secret="not-our-secret-at-all-000000")
        self.assertEqual(outcome.action, "dropped")
        self.assertIn("not a VERP address of ours", outcome.detail)
        self.assertEqual(self.run(bounce_stats, "dead@example.net")[0].bounced, 0)

    def test_missing_tag_is_ignored(self):
        """bounces+anything@ without a valid tag is logged and ignored."""
        outcome = deliver(self, self.processor, f"bounces+dead=example.net@{FQDN}",
                          dsn("dead@example.net"))
        self.assertEqual(outcome.action, "dropped")

    def test_spam_rejection_is_not_a_bounce(self):
        """Our mail refused as spam does not count against the address."""
        self.sent_today()
        outcome = self.bounce(body=dsn("dead@example.net", "5.7.1",
                                       "Message rejected as spam by Content Filtering"))
        self.assertEqual(outcome.action, "refused")
        self.assertIn("example.net refuses our mail (spamdetected)", outcome.detail)
        self.assertEqual(self.run(bounce_stats, "dead@example.net")[0].bounced, 0)

    def test_auto_reply_is_ignored(self):
        """A vacation reply to the VERP address is not a bounce."""
        outcome = self.bounce(body=b"From: dead@example.net\r\nSubject: Out of office\r\n"
                                   b"Auto-Submitted: auto-replied\r\n\r\nI am away.\r\n")
        self.assertEqual(outcome.action, "ignored")

    def test_unsubscribed_after_bouncing_every_day(self):
        """Bouncing everything on 4 mail days unsubscribes, mutes and notifies, at once."""
        for day in range(4):
            self.sent_today()
            outcome = self.bounce()
            if day < 3:
                self.assertEqual(outcome.action, "counted")
                self.assertEqual(self.run(subscriptions_of, "dead@example.net"),
                                 ["apt", "dpkg"])
            self.clock.now += DAY
        self.assertEqual(outcome.action, "unsubscribed")
        self.assertEqual(self.run(subscriptions_of, "dead@example.net"), [])
        self.assertEqual(self.run(team_member_ids, "qa"), [])
        copies = outbox(self, self.store)
        self.assertEqual(sorted(r for r, _, _ in copies),
                         ["dead@example.net", f"owner@{FQDN}"])
        notice = parse(copies[0][2])
        self.assertEqual(notice["Cc"], f"owner@{FQDN}")
        text = notice.get_content().replace("\r\n", "\n")
        self.assertIn("Unsubscribed from these packages:\n  apt\n  dpkg\n", text)
        self.assertIn("Muted the membership of these teams:\n  qa\n", text)

    def test_a_day_with_a_delivered_mail_keeps_the_address(self):
        """If one mail on one of the days got through, the address stays."""
        for day in range(4):
            self.sent_today()
            if day == 1:
                self.sent_today()  # two mails that day, one bounce
            self.bounce()
            self.clock.now += DAY
        self.assertEqual(self.run(subscriptions_of, "dead@example.net"), ["apt", "dpkg"])

    def test_stats_are_trimmed(self):
        """At most the mail days the rules read (max_days_tolerate_soft) are kept."""
        for day in range(17):
            self.sent_today()
            self.clock.now += DAY
        self.sent_today()
        self.bounce()
        self.assertEqual(len(self.run(bounce_stats, "dead@example.net")), 14)

    def test_smarthost_rejection_counts_as_hard_bounce(self):
        """A 5xx from the smarthost for a fan-out copy counts as a hard bounce."""
        hook = permanent_failure(self.processor.context)
        sender = verp.encode("dead@example.net", self.today(), self.secret, FQDN)
        self.sent_today()
        self.run(hook, "dead@example.net", sender, 550, "5.1.1 no such user", self.clock.now)
        self.assertEqual(self.run(bounce_stats, "dead@example.net")[0].bounced, 1)
        # A control reply (null sender) is not subject to the policy.
        self.run(hook, "dead@example.net", "", 550, "5.1.1 no such user", self.clock.now)
        self.assertEqual(self.run(bounce_stats, "dead@example.net")[0].bounced, 1)
