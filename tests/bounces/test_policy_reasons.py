"""
The bounce policy acts on the reason of a bounce: refusals of our mail
never count against the subscriber, a gone address counts hard, a full
mailbox counts after two weeks; and one copy's bounce counts once.
"""

import datetime

from twisted.trial.unittest import SynchronousTestCase

from tests.bounces.mails import BLOCKED, MAILBOX_FULL, USER_UNKNOWN, dsn
from tests.support.corpus import corpus_message
from tests.support.outbound import MemoryOutboundTransport
from tests.support.pipeline import FQDN, deliver, make_pipeline, outbox, parse
from tests.test_metrics import Delta, mailed_subscriber, series, start_sender
from trackermail.bounces import verp
from trackermail.bounces.policy import maintain, permanent_failure
from trackermail.store.bounce_domains import domain_report
from trackermail.store.bounce_stats import mail_days, record_sent
from trackermail.store.emails import email_id
from trackermail.store.outbox import enqueue
from trackermail.store.sql import Value
from trackermail.store.subscriptions import subscribe, subscriptions_of
from trackermail.store.teams import add_team, team_member_ids

DAY = 86400
DEAD = "dead@example.net"


class PolicyCase(SynchronousTestCase):
    def setUp(self):
        self.processor, self.store, self.clock = make_pipeline(self)
        self.secret = self.processor.config.tracker.secret_key
        self.run = lambda program, *a: self.successResultOf(self.store.run(program, *a))
        self.run(subscribe, DEAD, "dpkg")
        self.run(add_team, "qa", "QA", DEAD)
        self.hook = permanent_failure(self.processor.context)

    def today(self) -> datetime.date:
        return datetime.datetime.fromtimestamp(self.clock.now, datetime.timezone.utc).date()

    def sent_today(self, email=DEAD):
        self.run(record_sent, [email], self.today().isoformat())

    def address(self, rcpt=DEAD, token=None, day=None):
        return verp.encode(rcpt, day or self.today(), self.secret, FQDN, token=token)

    def bounce(self, status_text, rcpt=DEAD, address=None, **kwargs):
        status, text = status_text
        return deliver(self, self.processor, address or self.address(rcpt),
                       dsn(rcpt, status, text, **kwargs))

    def refuse(self, code, status_text, rcpt=DEAD, sender=None):
        """The smarthost refuses a copy at RCPT: what the sender's hook does."""
        status, text = status_text
        return self.run(self.hook, rcpt, sender or self.address(rcpt), code,
                        f"{status} {text}", self.clock.now)

    def days(self, email=DEAD):
        eid = self.run(email_id, email, False)
        return self.run(mail_days, eid, 30)

    def subscribed(self, email=DEAD):
        return self.run(subscriptions_of, email)


class ReasonGroupTests(PolicyCase):
    def test_our_side_by_dsn(self):
        """A DSN saying we are blocked is refused: not counted, shown per domain."""
        self.sent_today()
        outcome = self.bounce(BLOCKED)
        self.assertEqual(outcome.action, "refused")
        self.assertIn("example.net refuses our mail (blocked) since", outcome.detail)
        self.assertEqual(self.days(), [], "a refused copy is no mail day")
        [row] = self.run(domain_report, "2000-01-01")
        self.assertEqual((row.domain, row.reason, row.group, row.hard, row.soft),
                         ("example.net", "blocked", "ours", 1, 0))
        self.assertIn("zen.spamhaus.org", row.diagnostic)

    def test_our_side_by_smarthost_reply(self):
        """A '5.7.1 ... blocked using spamhaus' RCPT reply is ours, not the subscriber's."""
        self.sent_today()
        result = self.refuse(550, BLOCKED)
        self.assertEqual(result, "refused")
        self.assertEqual((result.fields["reason"], result.fields["group"]), ("blocked", "ours"))
        self.assertEqual(self.days(), [])

    def test_gone_by_dsn_and_reply(self):
        """An unknown user counts hard, from a DSN as from a smarthost reply."""
        self.sent_today()
        self.sent_today()
        self.assertEqual(self.bounce(USER_UNKNOWN).action, "counted")
        self.assertEqual(self.refuse(550, USER_UNKNOWN), "counted")
        [day] = self.days()
        self.assertEqual((day.sent, day.bounced, day.soft), (2, 2, 0))

    def test_gone_but_transient_is_soft(self):
        """A 4xx 'user unknown' (a DSN that gave up on a transient error) counts soft."""
        self.sent_today()
        outcome = self.bounce(("4.1.1", "user unknown"))
        self.assertEqual(outcome.action, "recorded")
        self.assertEqual(outcome.fields["reason"], "userunknown")
        [day] = self.days()
        self.assertEqual((day.bounced, day.soft), (0, 1))

    def test_persistent_soft_by_dsn_and_reply(self):
        """A full mailbox counts soft even when the DSN and the reply are 5xx."""
        self.sent_today()
        self.sent_today()
        outcome = self.bounce(MAILBOX_FULL)
        self.assertEqual((outcome.action, outcome.fields["reason"], outcome.fields["kind"]),
                         ("recorded", "mailboxfull", "hard"))
        self.assertEqual(self.refuse(552, MAILBOX_FULL), "recorded")
        [day] = self.days()
        self.assertEqual((day.bounced, day.soft), (0, 2))

    def test_unreadable_bounce_is_persistent_soft(self):
        """A recognised bounce with nothing readable counts soft."""
        self.sent_today()
        outcome = self.bounce(("5.0.0", "something odd happened"))
        self.assertEqual((outcome.action, outcome.fields["group"]),
                         ("recorded", "persistent-soft"))

    def test_other_reasons_are_soft(self):
        """An expired delivery (the remote unreachable for days) counts soft."""
        self.sent_today()
        outcome = self.bounce(("4.4.7", "delivery time expired"))
        self.assertEqual((outcome.action, outcome.fields["reason"], outcome.fields["group"]),
                         ("recorded", "expired", "other"))

    def test_delay_warning_is_ignored(self):
        """A warning that a copy is delayed is no bounce: the copy may still arrive."""
        self.sent_today()
        outcome = self.bounce(MAILBOX_FULL, action="delayed")
        self.assertEqual(outcome.action, "ignored")
        self.assertIn("delay warning", outcome.detail)
        # The real bounce of that copy, days later, still counts.
        address = self.address(token="aaaaa")
        self.bounce(MAILBOX_FULL, address=address, action="delayed")
        self.assertEqual(self.bounce(MAILBOX_FULL, address=address).action, "recorded")


class UnsubscriptionTests(PolicyCase):
    def test_mailbox_full_for_fourteen_days(self):
        """Fourteen mail days of full mailbox unsubscribe, mute and notify; thirteen do not."""
        for n in range(14):
            self.sent_today()
            outcome = self.bounce(MAILBOX_FULL)
            if n < 13:
                self.assertEqual(outcome.action, "recorded", n)
                self.assertEqual(self.subscribed(), ["dpkg"])
            self.clock.now += DAY
        self.assertEqual(outcome.action, "unsubscribed")
        self.assertEqual(self.subscribed(), [])
        self.assertEqual(self.run(team_member_ids, "qa"), [])
        copies = outbox(self, self.store)
        self.assertEqual(sorted(r for r, _, _ in copies), [DEAD, f"owner@{FQDN}"])
        text = parse(copies[0][2]).get_content().replace("\r\n", "\n")
        self.assertIn(f"sent to {DEAD} could not be delivered on each of the\n"
                      "last 14 days it was sent mail", text)
        self.assertIn("The last bounce (mailboxfull) said: 550 5.2.2 Mailbox full", text)
        self.assertIn("Unsubscribed from these packages:\n  dpkg\n", text)
        self.assertIn("Muted the membership of these teams:\n  qa\n", text)

    def test_a_day_without_bounce_restarts_the_count(self):
        """A mail day on which the mailbox took the mail starts the fourteen days again."""
        for n in range(20):
            self.sent_today()
            if n != 6:
                self.bounce(MAILBOX_FULL)
            self.clock.now += DAY
        self.assertEqual(self.subscribed(), ["dpkg"])
        self.sent_today()
        self.assertEqual(self.bounce(MAILBOX_FULL).action, "unsubscribed")

    def test_hard_and_soft_days_mix_toward_the_soft_rule(self):
        """Days of hard bounces count toward the fourteen days of any bounces."""
        for n in range(14):
            self.sent_today()
            self.bounce(MAILBOX_FULL if n % 4 else USER_UNKNOWN)
            self.clock.now += DAY
        self.assertEqual(self.subscribed(), [])

    def test_our_side_never_unsubscribes(self):
        """Refusals of our mail for 30 days unsubscribe no one, and show in the metrics."""
        delta = Delta(series("trackermail_refusals_by_domain_total",
                             domain="example.net", reason="blocked"),
                      series("trackermail_bounces_total", reason="blocked", kind="hard",
                             outcome="refused"),
                      series("trackermail_unsubscribed_by_bounce_total"))
        for _ in range(30):
            self.sent_today()
            self.sent_today()
            self.assertEqual(self.bounce(BLOCKED).action, "refused")
            self.assertEqual(self.refuse(550, BLOCKED), "refused")
            self.clock.now += DAY
        self.assertEqual(self.subscribed(), ["dpkg"])
        self.assertEqual([e for e, _ in self.run(team_member_ids, "qa")], [DEAD])
        self.assertEqual(outbox(self, self.store), [])
        self.assertEqual(self.days(), [])
        [row] = self.run(domain_report, "2000-01-01")
        self.assertEqual((row.group, row.hard), ("ours", 60))
        self.assertEqual(delta("trackermail_refusals_by_domain_total",
                               domain="example.net", reason="blocked"), 30)
        self.assertEqual(delta("trackermail_bounces_total", reason="blocked", kind="hard",
                               outcome="refused"), 30)
        self.assertEqual(delta("trackermail_unsubscribed_by_bounce_total"), 0)

    def test_refused_copies_do_not_hide_a_gone_address(self):
        """On days some copies are refused by our side, the others still decide."""
        for _ in range(4):
            self.sent_today()
            self.sent_today()
            self.bounce(BLOCKED)
            self.bounce(USER_UNKNOWN)
            self.clock.now += DAY
        self.assertEqual(self.subscribed(), [])


class ReplayTests(PolicyCase):
    def test_replayed_bounce_counts_once(self):
        """A second, different bounce message for the same copy is ignored."""
        self.sent_today()
        self.sent_today()
        address = self.address()
        self.assertEqual(self.bounce(USER_UNKNOWN, address=address).action, "counted")
        again = self.bounce(USER_UNKNOWN, address=address, reporter="mx2.example.net")
        self.assertEqual(again.action, "ignored")
        self.assertIn("already bounced", again.detail)
        self.assertEqual(self.days()[0].bounced, 1)

    def test_dsn_after_smarthost_refusal_counts_once(self):
        """A DSN for a copy the smarthost already refused is not counted again."""
        self.sent_today()
        address = self.address()
        self.assertEqual(self.refuse(550, USER_UNKNOWN, sender=address), "counted")
        self.assertEqual(self.bounce(USER_UNKNOWN, address=address).action, "ignored")
        self.assertEqual(self.days()[0].bounced, 1)

    def test_copies_of_one_fan_out_count_each(self):
        """Bounces of two copies sent on one day count twice: each copy has its own token."""
        self.sent_today()
        self.sent_today()
        self.bounce(USER_UNKNOWN, address=self.address(token="aaaaa"))
        self.bounce(USER_UNKNOWN, address=self.address(token="bbbbb"))
        self.assertEqual(self.days()[0].bounced, 2)

    def test_version_one_address_told_apart_by_message_id(self):
        """Old addresses name no copy: the returned Message-ID tells copies apart."""
        # Made by the previous release for dead@example.net on 2026-11-18.
        v1 = f"bounces+20261118-ncp6zkvd-dead=example.net@{FQDN}"
        self.assertIsNone(verp.decode(v1, self.secret, FQDN).copy)
        self.sent_today()
        self.sent_today()
        self.sent_today()
        first = self.bounce(USER_UNKNOWN, address=v1, original_id="<m1@example.org>")
        replay = self.bounce(USER_UNKNOWN, address=v1, original_id="<m1@example.org>",
                             reporter="mx2.example.net")
        other = self.bounce(USER_UNKNOWN, address=v1, original_id="<m2@example.org>")
        self.assertEqual([first.action, replay.action, other.action],
                         ["counted", "ignored", "counted"])
        self.assertEqual(self.days()[0].bounced, 2)

    def test_maintenance_forgets_old_copies(self):
        """Copies too old for their bounces to count are forgotten, recent ones kept."""
        count = lambda: self.run(lambda: (yield Value("SELECT COUNT(*) FROM bounced_copies")))  # noqa: E731
        self.sent_today()
        self.bounce(USER_UNKNOWN)
        self.clock.now += 11 * DAY
        self.run(maintain, self.clock.now, self.processor.config)
        self.assertEqual(count(), 1)
        self.clock.now += DAY
        self.run(maintain, self.clock.now, self.processor.config)
        self.assertEqual(count(), 0)


class CorpusTests(PolicyCase):
    # Real bounces of the labelled corpus, one or two per reason group.
    CASES = [
        ("soe-lhost-amazonses-15.eml", "kijitora@neko.example.com", "blocked", "refused"),
        ("soe-lhost-postfix-62.eml", "nyaan@libsisimai.org", "virusdetected", "refused"),
        ("soe-lhost-postfix-16.eml", "kijitora@example.go.jp", "hasmoved", "counted"),
        ("flufl-simple_07.txt", "william.xxxx@sbcglobal.net", "mailboxfull", "recorded"),
        ("soe-lhost-gmail-07.eml", "kijitora@example.ed.jp", "systemerror", "recorded"),
    ]

    def test_real_bounces_by_reason_group(self):
        """Real bounces of each reason group get their group's effect."""
        for name, rcpt, reason, action in self.CASES:
            self.run(subscribe, rcpt, "dpkg")
            self.sent_today(rcpt)
            raw = corpus_message(name).read_bytes()
            outcome = deliver(self, self.processor, self.address(rcpt), raw)
            self.assertEqual((outcome.action, outcome.fields.get("reason")), (action, reason),
                             name)


class SenderMetricsTests(SynchronousTestCase):
    def test_smarthost_refusal_metrics(self):
        """The outbox sender counts a smarthost refusal by reason and domain, not as a bounce."""
        processor, store, clock, jane = mailed_subscriber(self, "jane@refusing.example")
        transport = MemoryOutboundTransport()
        transport.script("jane@refusing.example", (554, " ".join(BLOCKED)))
        store.run(enqueue, b"Subject: x\r\n\r\nx\r\n", [("jane@refusing.example", jane)],
                  clock.seconds())
        delta = Delta(series("trackermail_refusals_by_domain_total",
                             domain="refusing.example", reason="blocked"),
                      series("trackermail_bounces_total", reason="blocked", kind="hard",
                             outcome="refused"),
                      series("trackermail_bounces_counted_total"))
        start_sender(self, processor, store, transport, clock)
        clock.advance(10)  # a 5xx at RCPT is held briefly (is the smarthost refusing?)
        self.assertEqual(delta("trackermail_refusals_by_domain_total",
                               domain="refusing.example", reason="blocked"), 1)
        self.assertEqual(delta("trackermail_bounces_total", reason="blocked", kind="hard",
                               outcome="refused"), 1)
        self.assertEqual(delta("trackermail_bounces_counted_total"), 0)


class DomainLabelTests(SynchronousTestCase):
    def test_domain_labels_are_capped(self):
        """Past 50 refusing domains, refusals count under domain="other"."""
        from trackermail import metrics

        self.patch(metrics, "_domains_labelled", set())
        domains = [f"d{i}.example" for i in range(51)]
        delta = Delta(*[series("trackermail_refusals_by_domain_total", domain=d,
                               reason="blocked") for d in domains + ["other"]])
        for d in domains:
            metrics.bounce_handled({"reason": "blocked", "kind": "hard", "group": "ours",
                                    "domain": d}, "refused")
        self.assertEqual(delta("trackermail_refusals_by_domain_total", domain="d49.example",
                               reason="blocked"), 1)
        self.assertEqual(delta("trackermail_refusals_by_domain_total", domain="d50.example",
                               reason="blocked"), 0)
        self.assertEqual(delta("trackermail_refusals_by_domain_total", domain="other",
                               reason="blocked"), 1)
