"""
The smarthost is not the recipient: which refusals count as bounces
(L{trackermail.outbound.smarthost}), and what the sender does with the
others.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from tests.outbound.test_sender import T0, SenderMixin, sent_counts, states
from trackermail import metrics
from trackermail.outbound.interface import (
    CONNECT,
    DATA,
    LOCAL,
    MAIL,
    RCPT,
    SESSION,
    Reply,
)
from trackermail.outbound.smarthost import (
    BOUNCE,
    DEFER,
    FAIL,
    HOLD,
    RETRY,
    SENT,
    SmarthostWatch,
    is_relay_refusal,
)
from trackermail.store.outbox import Delivery
from trackermail.store.outbox_report import delivery_rows


def delivery(rcpt: str, n: int = 1) -> Delivery:
    return Delivery(n, 1, rcpt, "bounces+x@t.example", 1, T0)


def sample(name: str, **labels) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class JudgeTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.released = []
        self.watch = SmarthostWatch(self.clock, lambda d, r, v: self.released.append(
            (d.recipient, v)), hold_time=10)
        self.addCleanup(self.watch.stop)

    def judge(self, rcpt, code, text, stage):
        return self.watch.judge(delivery(rcpt), Reply(code, text, stage))

    def test_verdicts(self):
        """Each kind of reply gets the verdict its stage and code call for."""
        cases = [
            ((250, "2.0.0 queued", DATA), SENT),
            ((451, "4.3.0 try later", RCPT), RETRY),
            ((421, "4.4.2 lost", SESSION), RETRY),
            ((452, "4.3.1 insufficient storage", MAIL), RETRY),
            ((554, "5.7.1 content rejected", DATA), FAIL),
            ((552, "5.3.4 message too big", DATA), FAIL),
            ((552, "5.3.4 message size exceeds limit", MAIL), FAIL),
            ((552, "5.3.4 over SIZE", LOCAL), FAIL),
            ((501, "5.1.3 bad address syntax", LOCAL), FAIL),
            ((421, "4.4.1 cannot connect", CONNECT), DEFER),
            ((553, "5.7.1 sender rejected", MAIL), DEFER),
            ((554, "5.7.1 <a@x.example>: Relay access denied", RCPT), DEFER),
            ((550, "5.1.1 <a@x.example>: unknown user", RCPT), HOLD),
        ]
        for (code, text, stage), verdict in cases:
            self.assertEqual(self.judge("a@x.example", code, text, stage), verdict,
                             (code, text, stage))

    def test_relay_refusals(self):
        """Relaying refusals are recognised in the wordings MTAs use, and nothing else is."""
        for text in ("5.7.1 <a@x>: Relay access denied", "5.7.1 Relaying denied",
                     "5.7.1 Unable to relay for a@x", "Relay not permitted",
                     "5.7.1 we do not relay", "5.7.1 relay not allowed from 192.0.2.1"):
            self.assertTrue(is_relay_refusal(Reply(554, text, RCPT)), text)
        for text in ("5.1.1 user unknown", "5.7.1 Message rejected as spam",
                     "5.7.1 <a@x>: Recipient address rejected: Access denied"):
            self.assertFalse(is_relay_refusal(Reply(550, text, RCPT)), text)
        self.assertFalse(is_relay_refusal(Reply(454, "4.7.1 Relay access denied", RCPT)))

    def test_held_until_the_time_is_up(self):
        """A permanent RCPT refusal is judged a bounce once the hold time passes."""
        self.judge("a@x.example", 550, "5.1.1 unknown", RCPT)
        self.clock.advance(9.9)
        self.assertEqual(self.released, [])
        self.clock.advance(0.1)
        self.assertEqual(self.released, [("a@x.example", BOUNCE)])

    def test_success_releases_held(self):
        """A later success releases held refusals as bounces."""
        self.judge("a@x.example", 550, "5.1.1 unknown", RCPT)
        self.judge("b@y.example", 550, "5.1.1 unknown", RCPT)
        self.judge("c@z.example", 250, "2.0.0 ok", DATA)
        self.assertEqual(self.released, [("a@x.example", BOUNCE), ("b@y.example", BOUNCE)])

    def test_different_refusal_releases_held(self):
        """A refusal with another text ends the run: what was held counts."""
        self.judge("a@x.example", 550, "5.1.1 <a@x.example>: unknown", RCPT)
        self.judge("b@y.example", 550, "5.2.1 <b@y.example>: disabled", RCPT)
        self.assertEqual(self.released, [("a@x.example", BOUNCE)])
        self.assertEqual(self.watch.held, 1)

    def test_same_refusal_across_three_domains_is_the_smarthost(self):
        """The same refusal (addresses aside) for three domains in a row defers all of them, and what follows."""
        self.judge("a@x.example", 550, "5.7.1 <a@x.example>: Access denied", RCPT)
        self.judge("a2@x.example", 550, "5.7.1 <a2@x.example>: Access denied", RCPT)
        self.judge("b@y.example", 550, "5.7.1 <b@y.example>: Access denied", RCPT)
        self.assertEqual(self.released, [])
        self.judge("c@z.example", 550, "5.7.1 <c@z.example>: Access denied", RCPT)
        self.assertEqual(self.released, [(r, DEFER) for r in (
            "a@x.example", "a2@x.example", "b@y.example", "c@z.example")])
        self.assertEqual(self.watch.refusing, "pattern")
        self.assertEqual(self.judge("d@w.example", 550, "5.7.1 <d@w.example>: Access denied",
                                    RCPT), DEFER)

    def test_same_refusal_in_one_domain_is_not_the_smarthost(self):
        """Many identical refusals within one domain are bounces: that domain refuses them."""
        for i in range(10):
            self.judge(f"u{i}@x.example", 550, "5.1.1 unknown user", RCPT)
        self.clock.advance(10)
        self.assertEqual([v for _, v in self.released], [BOUNCE] * 10)
        self.assertIsNone(self.watch.refusing)

    def test_refusing_gauge_and_counter(self):
        """While the smarthost refuses the gauge is 1 and deferrals are counted by reason; a success ends it."""
        before = sample("trackermail_smarthost_refusals_total", reason="mail")
        self.judge("a@x.example", 553, "5.7.1 sender rejected", MAIL)
        self.judge("b@x.example", 553, "5.7.1 sender rejected", MAIL)
        self.assertEqual(sample("trackermail_smarthost_refusing"), 1)
        self.assertEqual(sample("trackermail_smarthost_refusals_total", reason="mail") - before, 2)
        self.judge("c@x.example", 250, "2.0.0 ok", DATA)
        self.assertEqual(sample("trackermail_smarthost_refusing"), 0)
        self.assertIsNone(self.watch.refusing)

    def test_logs_rarely(self):
        """A refusing smarthost is logged once, then once every five minutes, and when it is back."""
        with capturedLogs() as events:
            for i in range(1000):
                self.judge(f"u{i}@x.example", 421, "4.4.1 cannot connect", CONNECT)
                self.clock.advance(0.5)
            self.judge("ok@x.example", 250, "2.0.0 ok", DATA)
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 2)
        self.assertEqual(warnings[1]["count"], 600)
        self.assertEqual([e["log_level"] for e in events][-1], LogLevel.info)


class SenderSmarthostTests(SenderMixin, SynchronousTestCase):
    def test_mail_refusal_defers_everything_without_bounce(self):
        """A smarthost refusing MAIL FROM: every copy is deferred with backoff, no bounce counted."""
        rcpts = [f"u{i}@d{i}.example" for i in range(5)]
        for r in rcpts:
            self.transport.refuse_sender(f"bounces+{r.split('@')[0]}@t.example",
                                         (554, "5.7.1 <bounces@t.example>: Sender rejected"))
        self.enqueue(*rcpts)
        self.start()
        self.clock.advance(10)
        rows = self.successResultOf(self.store.run(delivery_rows))
        self.assertEqual({r[2:5] for r in rows}, {("queued", 1, 554)})
        self.assertEqual(self.failures, [])
        self.assertEqual(self.sender.watch.refusing, "mail")

    def test_relay_denied_for_days_unsubscribes_nobody(self):
        """'554 5.7.1 Relay access denied' for 4 days: every copy deferred, never a bounce; then delivered."""
        rcpts = [f"u{i}@d{i % 3}.example" for i in range(6)]
        for r in rcpts:
            self.transport.script(r, *[(554, f"5.7.1 <{r}>: Relay access denied")] * 100)
        self.enqueue(*rcpts)
        sender = self.start(self.make_sender(give_up_days=5))
        for _ in range(4 * 24):
            self.clock.advance(3600)
        self.assertEqual(self.failures, [])
        self.assertEqual({s for _, s, _ in states(self, self.store)}, {"queued"})
        self.assertEqual(sender.watch.refusing, "relay")
        for r in rcpts:
            self.transport._per_recipient[r].clear()
        self.clock.advance(600)
        self.assertEqual(states(self, self.store), [])
        self.assertEqual(sorted(r for _, r in self.transport.delivered), sorted(rcpts))
        self.assertEqual(sent_counts(self, self.store), [6])
        self.assertIsNone(sender.watch.refusing)

    def test_identical_refusals_across_domains_defer(self):
        """The same RCPT refusal for several domains in a row is deferred, not bounced."""
        rcpts = [f"u{i}@d{i}.example" for i in range(4)]
        for r in rcpts:
            self.transport.script(r, (550, f"5.7.1 <{r}>: Recipient address rejected:"
                                           " Access denied"))
        self.enqueue(*rcpts)
        self.start()
        rows = self.successResultOf(self.store.run(delivery_rows))
        self.assertEqual({r[2] for r in rows}, {"queued"})
        self.assertEqual(self.failures, [])

    def test_connection_failures_defer(self):
        """A smarthost that cannot be reached defers every copy, none counted as a bounce."""
        self.transport.script_all((421, "4.4.1 cannot connect to mx:25: refused"), times=3)
        self.enqueue("a@x.example", "b@y.example", "c@z.example")
        self.start()
        self.assertEqual({s for _, s, _ in states(self, self.store)}, {"queued"})
        self.assertEqual(self.sender.watch.refusing, "connect")
        self.clock.advance(60)
        self.assertEqual(states(self, self.store), [])
        self.assertEqual(sorted(r for _, r in self.transport.delivered),
                         ["a@x.example", "b@y.example", "c@z.example"])
        self.assertEqual(sent_counts(self, self.store), [3])
        self.assertIsNone(self.sender.watch.refusing)

    def test_stop_while_holding(self):
        """Refusals still held when the sender stops are retried later, not counted."""
        self.transport.script("a@x.example", (550, "5.1.1 unknown"))
        self.enqueue("a@x.example")
        self.start()
        self.successResultOf(self.sender.stopService())
        self.assertEqual(states(self, self.store), [("a@x.example", "queued", 1)])
        self.assertEqual(self.failures, [])
