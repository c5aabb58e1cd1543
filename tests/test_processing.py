"""
Tests for L{trackermail.processing}: what happens to a message whose
handler succeeds, fails for a while, or can never succeed.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.support.pipeline import deliver, make_pipeline, outbox
from tests.vendor import fixture_bytes
from trackermail.errors import (
    InvalidValue,
    PermanentFailure,
    StoreUnavailable,
    TemporaryFailure,
)
from trackermail.handling import Outcome
from trackermail.processing import HandlerCrashed
from trackermail.store.packages import get_package
from trackermail.store.subscriptions import subscribe

FQDN = "tracker.example.org"


def raw_for(to: str, body: bytes) -> bytes:
    return f"Delivered-To: {to}\r\nReturn-Path: <sender@example.net>\r\n".encode() + body


class HandlerErrorTests(SynchronousTestCase):
    def setUp(self):
        self.processor, self.store, self.clock = make_pipeline(self)

    def failing(self, error: Exception):
        def handler(incoming, ctx):
            raise error
            yield  # a store program

        self.processor.handlers["dispatch"] = handler
        return self.failureResultOf(self.processor.process_bytes(
            raw_for(f"dispatch@{FQDN}", b"Subject: x\r\n\r\nbody\r\n")))

    def test_domain_error_is_permanent(self):
        """A handler's error nobody declared temporary sends the mail to failed/ at once."""
        failure = self.failing(InvalidValue('"a" is not a valid package name'))
        self.assertTrue(failure.check(PermanentFailure))
        self.assertIn("not a valid package name", str(failure.value))

    def test_bug_is_permanent_and_named(self):
        """A bug in a handler parks the mail (HandlerCrashed), and is logged."""
        failure = self.failing(KeyError("oops"))
        self.assertTrue(failure.check(HandlerCrashed))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_store_away_is_temporary(self):
        """A store that cannot be reached makes the failure temporary (retried)."""
        failure = self.failing(StoreUnavailable("PostgreSQL: connection refused"))
        self.assertTrue(failure.check(TemporaryFailure))


class OutcomeTests(SynchronousTestCase):
    def setUp(self):
        self.processor, self.store, self.clock = make_pipeline(self)

    def test_same_message_twice(self):
        """A message seen again (a crash between commit and unlink) is not forwarded twice."""
        self.successResultOf(self.store.run(subscribe, "a@example.org", "dpkg"))
        raw = raw_for(f"dispatch+dpkg_bts@{FQDN}", b"Subject: x\r\n\r\nbody\r\n")
        first = self.successResultOf(self.processor.process_bytes(raw))
        second = self.successResultOf(self.processor.process_bytes(raw))
        self.assertEqual((first.action, second.action), ("forwarded", "duplicate"))
        self.assertEqual(len(outbox(self, self.store)), 1)

    def test_one_letter_package_in_archive_mail(self):
        """
        An archive mail naming a one-letter package (not a Debian package
        name) is dropped with a reason, not retried for hours.
        """
        raw = fixture_bytes("dak-accepted-source.eml").replace(b"hello", b"q")
        outcome = deliver(self, self.processor, f"dispatch@{FQDN}", raw)
        self.assertIsInstance(outcome, Outcome)
        self.assertEqual(outcome.action, "dropped")
        self.assertIsNone(self.successResultOf(self.store.run(get_package, "q")))
