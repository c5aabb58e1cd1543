"""
Tests for L{trackermail.processing}: what happens to a message whose
handler succeeds, fails for a while, or can never succeed.
"""

from __future__ import annotations

import os

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
from trackermail.ingress.spool import Envelope, Spool, new_queue_id
from trackermail.processing import HEAD_LIMIT, HandlerCrashed
from trackermail.routing import route_address
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


class SpoolFileTests(SynchronousTestCase):
    """Messages as the servers store them: one file per transaction, with its envelope."""

    def setUp(self):
        self.processor, self.store, self.clock = make_pipeline(self)
        self.spool = Spool(self.mktemp(), fsync=False, runner=_now, write_runner=_now)
        self.addCleanup(self.spool.close)
        self.successResultOf(self.store.run(subscribe, "jane@example.org", "dpkg"))

    def store_message(self, rcpts, data: bytes, sender="rep@example.net") -> str:
        envelope = Envelope(new_queue_id(), sender, tuple(rcpts),
                            tuple(route_address(r, FQDN, False) for r in rcpts))
        writer = self.spool.open_transaction(envelope)
        writer.write(data)
        return self.successResultOf(writer.commit())

    def test_every_recipient_once(self):
        """A transaction for control@ and a package is processed for both, once."""
        path = self.store_message([f"control@{FQDN}", f"dispatch+dpkg_bts@{FQDN}"],
                                  b"From: rep@example.net\nSubject: help\n\nhelp\n")
        outcomes = self.successResultOf(self.processor.process_file(path))
        self.assertEqual([o.action for o in outcomes], ["replied", "forwarded"])
        again = self.successResultOf(self.processor.process_file(path))
        self.assertEqual([o.action for o in again], ["duplicate", "duplicate"])
        rcpts = sorted(r for r, _, _ in outbox(self, self.store))
        self.assertEqual(rcpts, ["jane@example.org", "rep@example.net"])

    def test_one_recipient_fails_the_others_are_kept(self):
        """
        One recipient failing for good parks the file, but the others are
        done; after a requeue only the failed one runs again.
        """
        path = self.store_message([f"control@{FQDN}", f"dispatch+dpkg_bts@{FQDN}"],
                                  b"From: rep@example.net\nSubject: help\n\nhelp\n")
        real = self.processor.handlers["dispatch"]

        def broken(incoming, ctx):
            raise InvalidValue("broken for now")
            yield

        self.processor.handlers["dispatch"] = broken
        failure = self.failureResultOf(self.processor.process_file(path), PermanentFailure)
        self.assertIn(f"<dispatch+dpkg_bts@{FQDN}>: InvalidValue: broken for now",
                      str(failure.value))
        self.processor.handlers["dispatch"] = real
        outcomes = self.successResultOf(self.processor.process_file(path))
        self.assertEqual([o.action for o in outcomes], ["duplicate", "forwarded"])

    def test_big_message_read_in_pieces(self):
        """
        Handlers of a 3 MiB message read its first megabyte; the copy
        forwarded is the whole message, byte for byte.
        """
        seen = []
        real = self.processor.handlers["dispatch"]

        def spy(incoming, ctx):
            seen.append((len(incoming.raw), len(incoming.whole)))
            return (yield from real(incoming, ctx))

        self.processor.handlers["dispatch"] = spy
        data = b"Subject: big\n\n" + b"0123456789abcdef\n" * (3 * 1024 * 1024 // 17)
        path = self.store_message([f"dispatch+dpkg_bts@{FQDN}"], data)
        [outcome] = self.successResultOf(self.processor.process_file(path))
        self.assertEqual(outcome.action, "forwarded")
        self.assertEqual(seen, [(HEAD_LIMIT, len(data))])
        [(_, _, copy)] = outbox(self, self.store)
        self.assertTrue(copy.endswith(data))

    def test_file_of_the_older_spool(self):
        """A file the previous spool wrote is processed; its delivery lines are not forwarded."""
        path = os.path.join(self.spool.dir("new"), "1700000000.M1P1Q1.host")
        with open(path, "wb") as f:
            f.write(f"Return-Path: <rep@example.net>\nDelivered-To: dispatch+dpkg_bts@{FQDN}\n"
                    f"Subject: old\n\nbody\n".encode())
        [outcome] = self.successResultOf(self.processor.process_file(path))
        self.assertEqual(outcome.action, "forwarded")
        [(_, _, copy)] = outbox(self, self.store)
        self.assertNotIn(b"Delivered-To", copy)
        self.assertNotIn(b"Return-Path", copy)
        self.assertTrue(copy.endswith(b"Subject: old\n\nbody\n"))


def _now(f, *args):
    from twisted.internet import defer

    return defer.maybeDeferred(f, *args)
