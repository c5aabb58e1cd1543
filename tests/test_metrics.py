"""
The Prometheus metrics: what an operator's dashboard sees after mail was
received, processed, sent, bounced and confirmed.
"""

import datetime
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.bounces.test_policy import dsn
from tests.support.outbound import MemoryOutboundTransport
from tests.support.pipeline import FQDN, deliver, make_pipeline
from trackermail import metrics
from trackermail.bounces import verp
from trackermail.bounces.policy import permanent_failure
from trackermail.errors import PermanentFailure, StoreUnavailable
from trackermail.outbound.sender import OutboxSender
from trackermail.store.bounce_stats import record_sent
from trackermail.store.outbox import enqueue
from trackermail.store.outbox_report import OutboxSummary
from trackermail.store.subscriptions import subscribe, subscriptions_of

DAY = 86400

BUG_MAIL = (
    b"From: Reporter <rep@example.net>\r\n"
    b"Subject: Bug#1: dpkg: broken\r\n"
    b"Message-ID: <bug1@bugs.example.org>\r\n"
    b"X-Distro-Tracker-Package: dpkg\r\n"
    b"X-Distro-Tracker-Keyword: bts\r\n"
    b"\r\nbroken\r\n"
)


def value(name, **labels):
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Counter values before an action, to compare with after it."""

    def __init__(self, *series):
        self.before = {_key(name, labels): value(name, **labels) for name, labels in series}

    def __call__(self, name, **labels):
        return value(name, **labels) - self.before[_key(name, labels)]


def _key(name, labels):
    return (name, tuple(sorted(labels.items())))


def series(name, **labels):
    return (name, labels)


def mailed_subscriber(case, email):
    """
    A pipeline where C{email} subscribes to dpkg and was sent mail today:
    C{(processor, store, clock, VERP address of a copy to it)}.
    """
    processor, store, fake = make_pipeline(case)
    clock = Clock()
    clock.advance(fake.now)
    today = datetime.datetime.fromtimestamp(fake.now, datetime.timezone.utc).date()
    store.run(subscribe, email, "dpkg")
    store.run(record_sent, [email], today.isoformat())
    address = verp.encode(email, today, processor.config.tracker.secret_key, FQDN)
    return processor, store, clock, address


def start_sender(case, processor, store, transport, clock):
    """A running outbox sender that takes permanent failures to the bounce policy."""
    sender = OutboxSender(store, transport, clock, node="n1",
                          on_permanent_failure=permanent_failure(processor.context))
    sender.startService()
    case.addCleanup(sender.stopService)
    return sender


class ProcessingMetricsTests(SynchronousTestCase):
    def setUp(self):
        self.processor, self.store, self.clock = make_pipeline(self)
        self.run = lambda program, *a: self.successResultOf(self.store.run(program, *a))

    def test_processed_message_counted_per_service(self):
        """A forwarded bug mail counts as received and processed by dispatch, with its latency."""
        self.run(subscribe, "alice@example.org", "dpkg")
        delta = Delta(
            series("trackermail_messages_received_total", service="dispatch"),
            series("trackermail_messages_processed_total", service="dispatch",
                   action="forwarded"),
            series("trackermail_processing_seconds_count", service="dispatch"),
        )
        outcome = deliver(self, self.processor, f"dispatch@{FQDN}", BUG_MAIL)
        self.assertEqual(outcome.action, "forwarded")
        self.assertEqual(delta("trackermail_messages_received_total", service="dispatch"), 1)
        self.assertEqual(delta("trackermail_messages_processed_total", service="dispatch",
                               action="forwarded"), 1)
        self.assertEqual(delta("trackermail_processing_seconds_count", service="dispatch"), 1)
        text, _ = metrics.render()
        self.assertIn(b'trackermail_processing_seconds_bucket{le="+Inf",service="dispatch"}',
                      text)

    def test_duplicate_is_not_received_twice(self):
        """The same message processed twice counts once as received, once as duplicate."""
        delta = Delta(
            series("trackermail_messages_received_total", service="dispatch"),
            series("trackermail_messages_processed_total", service="dispatch",
                   action="duplicate"),
        )
        deliver(self, self.processor, f"dispatch@{FQDN}", BUG_MAIL)
        outcome = deliver(self, self.processor, f"dispatch@{FQDN}", BUG_MAIL)
        self.assertEqual(outcome.action, "duplicate")
        self.assertEqual(delta("trackermail_messages_received_total", service="dispatch"), 1)
        self.assertEqual(delta("trackermail_messages_processed_total", service="dispatch",
                               action="duplicate"), 1)

    def test_permanent_failure_counted(self):
        """Mail that can never be processed counts as a permanent failure."""
        delta = Delta(series("trackermail_processing_failures_total", kind="permanent"))
        raw = f"Delivered-To: nobody@{FQDN}\r\n".encode() + BUG_MAIL
        self.failureResultOf(self.processor.process_bytes(raw), PermanentFailure)
        self.assertEqual(delta("trackermail_processing_failures_total", kind="permanent"), 1)

    def test_temporary_failure_counted(self):
        """A store error while processing counts as a temporary failure."""
        delta = Delta(series("trackermail_processing_failures_total", kind="temporary"))

        def unreachable(incoming, ctx):
            raise StoreUnavailable("PostgreSQL: connection refused")
            yield

        self.processor.handlers["dispatch"] = unreachable
        raw = f"Delivered-To: dispatch@{FQDN}\r\n".encode() + BUG_MAIL
        self.failureResultOf(self.processor.process_bytes(raw))
        self.assertEqual(delta("trackermail_processing_failures_total", kind="temporary"), 1)

    def test_handler_bug_counted_permanent(self):
        """A bug in a handler counts as a permanent failure (the mail goes to failed/)."""
        delta = Delta(series("trackermail_processing_failures_total", kind="permanent"))

        def broken(incoming, ctx):
            raise RuntimeError("a bug")
            yield

        self.processor.handlers["dispatch"] = broken
        raw = f"Delivered-To: dispatch@{FQDN}\r\n".encode() + BUG_MAIL
        self.failureResultOf(self.processor.process_bytes(raw))
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(delta("trackermail_processing_failures_total", kind="permanent"), 1)

    def test_confirmation_sent_counted(self):
        """A subscribe request by mail counts one confirmation sent."""
        delta = Delta(series("trackermail_confirmations_sent_total"))
        outcome = deliver(self, self.processor, f"control@{FQDN}",
                          b"From: jane@example.net\r\nSubject: subscribe dpkg\r\n"
                          b"Message-ID: <s1@example.net>\r\n\r\nthanks\r\n")
        self.assertEqual(outcome.action, "replied")
        self.assertEqual(delta("trackermail_confirmations_sent_total"), 1)

    def test_bounces_counted_and_unsubscription(self):
        """Four days of bounces count four bounces and one unsubscription by bounce."""
        self.run(subscribe, "dead@example.net", "dpkg")
        delta = Delta(series("trackermail_bounces_counted_total"),
                      series("trackermail_unsubscribed_by_bounce_total"))
        secret = self.processor.config.tracker.secret_key
        for _ in range(4):
            today = datetime.datetime.fromtimestamp(self.clock.now, datetime.timezone.utc).date()
            self.run(record_sent, ["dead@example.net"], today.isoformat())
            address = verp.encode("dead@example.net", today, secret, FQDN)
            deliver(self, self.processor, address, dsn("dead@example.net"))
            self.clock.now += DAY
        self.assertEqual(self.run(subscriptions_of, "dead@example.net"), [])
        self.assertEqual(delta("trackermail_bounces_counted_total"), 4)
        self.assertEqual(delta("trackermail_unsubscribed_by_bounce_total"), 1)

    def test_soft_bounce_not_counted(self):
        """A soft bounce is not a counted bounce."""
        self.run(subscribe, "full@example.net", "dpkg")
        delta = Delta(series("trackermail_bounces_counted_total"))
        today = datetime.datetime.fromtimestamp(self.clock.now, datetime.timezone.utc).date()
        address = verp.encode("full@example.net", today,
                              self.processor.config.tracker.secret_key, FQDN)
        outcome = deliver(self, self.processor, address,
                          dsn("full@example.net", "4.2.2", "Mailbox full"))
        self.assertEqual(outcome.action, "recorded")
        self.assertEqual(delta("trackermail_bounces_counted_total"), 0)


class DeliveryMetricsTests(SynchronousTestCase):
    def test_deliveries_sent_retried_failed(self):
        """The sender counts sent, retried and failed deliveries, and 5xx as bounces."""
        processor, store, clock, gone = mailed_subscriber(self, "gone@example.org")
        transport = MemoryOutboundTransport()
        transport.script("later@example.org", (451, "4.3.0 try later"))
        transport.script("gone@example.org", (550, "5.1.1 no such user"))
        store.run(enqueue, b"Subject: x\r\n\r\nx\r\n", [
            ("ok@example.org", ""), ("later@example.org", ""), ("gone@example.org", gone),
        ], clock.seconds())
        delta = Delta(series("trackermail_deliveries_total", result="sent"),
                      series("trackermail_deliveries_total", result="retried"),
                      series("trackermail_deliveries_total", result="failed"),
                      series("trackermail_bounces_counted_total"))
        start_sender(self, processor, store, transport, clock)
        clock.advance(10)  # a 5xx at RCPT is held briefly (is the smarthost refusing?)
        self.assertEqual(delta("trackermail_deliveries_total", result="sent"), 1)
        self.assertEqual(delta("trackermail_deliveries_total", result="retried"), 1)
        self.assertEqual(delta("trackermail_deliveries_total", result="failed"), 1)
        self.assertEqual(delta("trackermail_bounces_counted_total"), 1)
        clock.advance(3600)
        self.assertEqual(delta("trackermail_deliveries_total", result="sent"), 2)

    def test_deliveries_function(self):
        """metrics.deliveries adds each count to its own series; zeros add nothing."""
        delta = Delta(series("trackermail_deliveries_total", result="sent"),
                      series("trackermail_deliveries_total", result="failed"))
        metrics.deliveries(sent=3, retried=0, failed=2)
        metrics.deliveries()
        self.assertEqual(delta("trackermail_deliveries_total", result="sent"), 3)
        self.assertEqual(delta("trackermail_deliveries_total", result="failed"), 2)


class ScrapeStateTests(SynchronousTestCase):
    def test_spool_depth_counts_messages_only(self):
        """Spool depth counts messages, not dot files or the reasons beside parked mail."""
        spool = self.mktemp()
        for sub in ("new", "failed", "broken", "tmp"):
            os.makedirs(os.path.join(spool, sub))
        for name in ("new/1.a", "new/2.b", "new/.hidden", "failed/3.c", "failed/3.c.reason",
                     "tmp/4.d"):
            open(os.path.join(spool, name), "w").close()
        self.assertEqual(metrics.spool_depth(spool), {"new": 2, "failed": 1, "broken": 0})

    def test_missing_spool_directory(self):
        """A spool directory that cannot be read is left out, not reported as 0."""
        spool = self.mktemp()
        os.makedirs(os.path.join(spool, "new"))
        depth = metrics.spool_depth(spool)
        self.assertEqual(depth, {"new": 0, "failed": None, "broken": None})
        text, _ = metrics.render(metrics.StateSnapshot(depth, None, 0.0))
        self.assertIn(b'trackermail_spool_messages{state="new"} 0.0\n', text)
        self.assertNotIn(b'state="failed"} ', text.split(b"trackermail_spool_messages", 1)[1]
                         .split(b"# HELP", 1)[0])

    def test_outbox_gauges(self):
        """The outbox depth by state and how late the most overdue delivery is."""
        summary = OutboxSummary(queued=5, sending=2, sent=100, failed=1, oldest_due=1000.0)
        text, content_type = metrics.render(metrics.StateSnapshot({}, summary, 1090.0))
        self.assertEqual(content_type, "text/plain; version=0.0.4; charset=utf-8")
        self.assertIn(b'trackermail_outbox_deliveries{state="queued"} 5.0\n', text)
        self.assertIn(b'trackermail_outbox_deliveries{state="sending"} 2.0\n', text)
        self.assertIn(b'trackermail_outbox_deliveries{state="failed"} 1.0\n', text)
        self.assertIn(b"trackermail_outbox_oldest_due_age_seconds 90.0\n", text)
        self.assertIn(b"trackermail_store_up 1.0\n", text)

    def test_nothing_due(self):
        """With nothing due, the oldest due age is 0."""
        summary = OutboxSummary(queued=0, sending=0, sent=0, failed=0, oldest_due=None)
        text, _ = metrics.render(metrics.StateSnapshot({}, summary, 1090.0))
        self.assertIn(b"trackermail_outbox_oldest_due_age_seconds 0.0\n", text)

    def test_store_down(self):
        """Without a store answer the outbox series are absent and store_up is 0."""
        text, _ = metrics.render(metrics.StateSnapshot({"new": 3}, None, 0.0))
        self.assertIn(b"trackermail_store_up 0.0\n", text)
        self.assertIn(b'trackermail_spool_messages{state="new"} 3.0\n', text)
        self.assertNotIn(b"trackermail_outbox", text)

    def test_openmetrics(self):
        """An OpenMetrics Accept header gets OpenMetrics text ending in # EOF."""
        text, content_type = metrics.render(
            None, "application/openmetrics-text; version=1.0.0; charset=utf-8")
        self.assertTrue(content_type.startswith("application/openmetrics-text"))
        self.assertTrue(text.endswith(b"# EOF\n"))
        self.assertIn(b"# TYPE trackermail_deliveries counter", text)
