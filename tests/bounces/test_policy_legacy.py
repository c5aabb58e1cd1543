"""
The cutover from distro-tracker: bounces to its own unsigned VERP
addresses count only under [bounces] legacy_verp_until, for recent copies
to subscribed addresses, when the bounce is hard.
"""

import datetime
import tomllib

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.bounces.mails import BLOCKED, MAILBOX_FULL, USER_UNKNOWN, dsn
from tests.support.pipeline import FQDN, deliver, make_pipeline
from trackermail.bounces.legacy import LegacyVerp, decode_legacy
from trackermail.bounces.verp import InvalidVerp
from trackermail.config import config_from_dict
from trackermail.errors import ConfigError
from trackermail.store.bounce_stats import bounce_stats, record_sent
from trackermail.store.subscriptions import subscribe, subscriptions_of, unsubscribe_all

DAY = 86400
TODAY = datetime.date(2026, 11, 18)  # the pipeline's clock


class SettingTests(SynchronousTestCase):
    def test_settings(self):
        """The new [bounces] settings have defaults, take a TOML date, and refuse bad values."""
        config = config_from_dict({"tracker": {"fqdn": FQDN, "secret_key": "k"}})
        self.assertEqual((config.bounces.max_days_tolerate_soft,
                          config.bounces.legacy_verp_until), (14, ""))
        toml = tomllib.loads("[bounces]\nlegacy_verp_until = 2026-12-01\n")
        config = config_from_dict(dict(toml, tracker={"fqdn": FQDN, "secret_key": "k"}))
        self.assertEqual(config.bounces.legacy_verp_until, "2026-12-01")
        for bad, message in [
            ({"legacy_verp_until": "next week"},
             "[bounces] legacy_verp_until: expected a date YYYY-MM-DD, got 'next week'"),
            ({"max_days_tolerate_soft": 0},
             "[bounces] max_days_tolerate_soft: must be at least 1"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                config_from_dict({"tracker": {"fqdn": FQDN, "secret_key": "k"}, "bounces": bad})
            self.assertEqual(str(caught.exception), message)


class DecodeLegacyTests(SynchronousTestCase):
    def test_distro_tracker_encoding(self):
        """Addresses as distro-tracker's verp.encode writes them decode to day and address."""
        cases = {
            "20261115-jane=example.org": "jane@example.org",
            "20261115-dave+2Bpriority=new.example.com": "dave+priority@new.example.com",
            "20261115-node42+21ann=old.example.com": "node42!ann@old.example.com",
            "20261115-tom+2Dx=old+2Dexample.com": "tom-x@old-example.com",
            "20261115-a=b=example.org": "a=b@example.org",
            "20261115-jane+2bx=example.org": "jane+x@example.org",
        }
        for text, email in cases.items():
            self.assertEqual(decode_legacy(text), LegacyVerp(datetime.date(2026, 11, 15), email))

    def test_not_the_form(self):
        """Anything else in bounces+ is not distro-tracker's form."""
        for text in ["", "20261115", "20261115-jane", "jane=example.org",
                     "2026111-jane=example.org", "20261131-jane=example.org",
                     "20261115-=example.org", "20261115-jane=", "20261115-ja ne=example.org",
                     "x-20261115-jane=example.org", "20261115-jane=exa+40mple.org",
                     "20261115-" + "a" * 2000 + "=example.org"]:
            self.assertRaises(InvalidVerp, decode_legacy, text)


class LegacyPolicyTests(SynchronousTestCase):
    def setUp(self):
        self.log = []
        globalLogPublisher.addObserver(self.log.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.log.append)

    def pipeline(self, until="2026-11-30"):
        self.processor, self.store, self.clock = make_pipeline(
            self, bounces={"legacy_verp_until": until})
        self.run = lambda program, *a: self.successResultOf(self.store.run(program, *a))
        self.run(subscribe, "jane@example.org", "dpkg")

    def bounce(self, sent="20261115", rcpt="jane@example.org", reply=USER_UNKNOWN):
        local, domain = rcpt.split("@")
        return deliver(self, self.processor, f"bounces+{sent}-{local}={domain}@{FQDN}",
                       dsn(rcpt, *reply))

    def bounced(self, email="jane@example.org"):
        return sum(s.bounced for s in self.run(bounce_stats, email))

    def why(self):
        return [e.get("why") for e in self.log if e.get("why")]

    def test_counted_when_all_hold(self):
        """A hard bounce of a recent copy to a subscriber, during the cutover, counts."""
        self.pipeline()
        self.run(record_sent, ["jane@example.org"], "2026-11-15")
        outcome = self.bounce()
        self.assertEqual(outcome.action, "counted")
        self.assertEqual(self.run(bounce_stats, "jane@example.org")[0].day, "2026-11-15")
        self.assertEqual(self.bounced(), 1)

    def test_boundaries_count(self):
        """On the last day of the cutover, a copy sent 7 days before still counts."""
        self.pipeline(until="2026-11-18")
        self.assertEqual(self.bounce(sent="20261111").action, "counted")

    def test_off_by_default(self):
        """Without legacy_verp_until, such bounces are ignored, saying why."""
        self.pipeline(until="")
        outcome = self.bounce()
        self.assertEqual(outcome.action, "ignored")
        self.assertIn("legacy_verp_until is not set", outcome.detail)
        self.assertEqual(self.why(), ["[bounces] legacy_verp_until is not set"])
        self.assertEqual(self.bounced(), 0)

    def test_after_the_cutover(self):
        """The day after legacy_verp_until, they are ignored."""
        self.pipeline(until="2026-11-17")
        outcome = self.bounce()
        self.assertEqual(outcome.action, "ignored")
        self.assertIn("the cutover ended on 2026-11-17", outcome.detail)
        self.assertEqual(self.bounced(), 0)

    def test_copy_too_old(self):
        """A copy sent 8 days ago is too old to count."""
        self.pipeline()
        outcome = self.bounce(sent="20261110")
        self.assertEqual(outcome.action, "ignored")
        self.assertIn("sent on 2026-11-10, more than 7 days ago", outcome.detail)
        self.assertEqual(self.bounced(), 0)

    def test_not_subscribed(self):
        """A bounce naming an address that gets no mail is ignored."""
        self.pipeline()
        self.run(subscribe, "gone@example.org", "dpkg")
        self.run(unsubscribe_all, "gone@example.org")
        for rcpt in ("gone@example.org", "stranger@example.org"):
            outcome = self.bounce(rcpt=rcpt)
            self.assertEqual(outcome.action, "ignored")
            self.assertIn(f"{rcpt} is not subscribed", outcome.detail)
        self.assertEqual(self.bounced("gone@example.org"), 0)

    def test_not_hard(self):
        """A soft bounce (a full mailbox, 4.2.2) to the old form is ignored."""
        self.pipeline()
        outcome = self.bounce(reply=("4.2.2", "Mailbox full"))
        self.assertEqual(outcome.action, "ignored")
        self.assertIn("the analyzer does not call it hard (mailboxfull)", outcome.detail)
        self.assertEqual(self.run(bounce_stats, "jane@example.org"), [])

    def test_hard_refusal_of_ours_is_not_counted(self):
        """A hard bounce that refuses our mail is still ours: recorded per domain only."""
        self.pipeline()
        self.assertEqual(self.bounce(reply=BLOCKED).action, "refused")
        self.assertEqual(self.bounced(), 0)

    def test_hard_full_mailbox_counts_soft(self):
        """A 5.2.2 full mailbox passes the gate and then counts as the reason says: soft."""
        self.pipeline()
        self.assertEqual(self.bounce(reply=MAILBOX_FULL).action, "recorded")

    def test_unsubscribes_like_our_own(self):
        """Four days of hard legacy bounces unsubscribe, as bounces to our own addresses do."""
        self.pipeline()
        for day in ("2026-11-15", "2026-11-16", "2026-11-17", "2026-11-18"):
            self.run(record_sent, ["jane@example.org"], day)
            outcome = self.bounce(sent=day.replace("-", ""))
        self.assertEqual(outcome.action, "unsubscribed")
        self.assertEqual(self.run(subscriptions_of, "jane@example.org"), [])

    def test_garbage_is_still_dropped(self):
        """bounces+ text in neither form is dropped as not ours."""
        self.pipeline()
        outcome = deliver(self, self.processor, f"bounces+nonsense@{FQDN}",
                          dsn("jane@example.org"))
        self.assertEqual(outcome.action, "dropped")
        self.assertIn("not a VERP address of ours", outcome.detail)
