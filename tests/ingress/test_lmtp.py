"""
Protocol tests of the LMTP server over StringTransport.
"""

from __future__ import annotations

import errno

from twisted.internet.address import UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from tests.ingress import FQDN, connect, replies
from trackermail.ingress.lmtp import LMTPIngress

F = FQDN.encode()
MESSAGE = b"Subject: hello\r\n\r\nbody\r\n.\r\n"


class LMTPServerTests(SynchronousTestCase):
    def start(self, **kw):
        proto, t, spool, clock = connect(protocol_class=LMTPIngress, **kw)
        self.assertEqual(replies(t), [b"220 " + F + b" LMTP trackermail"])
        return proto, t, spool

    def test_lhlo(self):
        """LHLO lists the extensions LMTP requires."""
        proto, t, _ = self.start()
        proto.dataReceived(b"LHLO mta.example\r\n")
        lines = replies(t)
        self.assertEqual(lines[0], b"250-" + F)
        self.assertIn(b"250-PIPELINING", lines)
        self.assertIn(b"250 ENHANCEDSTATUSCODES", lines)

    def test_helo_ehlo_refused(self):
        """HELO and EHLO are refused on LMTP."""
        proto, t, _ = self.start()
        proto.dataReceived(b"HELO x\r\nEHLO x\r\n")
        self.assertEqual(replies(t), [b"500 5.5.1 Error: this is LMTP, use LHLO"] * 2)

    def test_one_reply_per_recipient(self):
        """After the dot each accepted recipient gets its own reply, in RCPT order."""
        proto, t, spool = self.start()
        proto.dataReceived(
            b"LHLO x\r\nMAIL FROM:<a@b.c>\r\n"
            b"RCPT TO:<team+perl@" + F + b">\r\n"
            b"RCPT TO:<nobody@" + F + b">\r\n"
            b"RCPT TO:<control@" + F + b">\r\n"
            b"DATA\r\n" + MESSAGE + b"QUIT\r\n")
        lines = replies(t)
        self.assertTrue(lines[-3].startswith(b"550 5.1.1"))
        self.assertEqual(spool.recipients, [f"team+perl@{FQDN}", f"control@{FQDN}"])
        self.assertFalse(t.disconnecting)
        self.assertEqual(len(spool.calls), 1)
        spool.calls[0].deferred.callback("/a")
        lines = replies(t)
        self.assertRegex(lines[0], rb"^250 2\.0\.0 <team\+perl@" + F.replace(b".", rb"\.")
                         + rb"> Ok: queued as ")
        self.assertRegex(lines[1], rb"^250 2\.0\.0 <control@")
        self.assertEqual(lines[2], b"221 2.0.0 Bye")

    def test_disk_error_defers_every_recipient(self):
        """A disk error defers every recipient of the transaction: nothing is half-stored."""
        proto, t, spool = self.start()
        proto.dataReceived(b"LHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<control@" + F + b">\r\n"
                           b"RCPT TO:<dispatch@" + F + b">\r\nDATA\r\n" + MESSAGE)
        replies(t)
        spool.calls[0].deferred.errback(OSError(errno.ENOSPC, "No space left on device"))
        lines = replies(t)
        self.assertEqual(lines, [
            b"451 4.3.0 <control@" + F + b"> Error: queue file write error",
            b"451 4.3.0 <dispatch@" + F + b"> Error: queue file write error"])
        self.flushLoggedErrors(OSError)

    def test_duplicate_recipients(self):
        """A recipient given twice gets two replies and one stored copy."""
        proto, t, spool = self.start()
        proto.dataReceived(b"LHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<control@" + F + b">\r\n"
                           b"RCPT TO:<Control@" + F + b">\r\nDATA\r\n" + MESSAGE)
        replies(t)
        spool.fire_all()
        self.assertEqual(len(spool.calls), 1)
        lines = replies(t)
        self.assertEqual(len(lines), 2)
        self.assertIn(b"<Control@", lines[1])

    def test_too_big_per_recipient(self):
        """An oversized message gets 552 5.3.4 for each recipient."""
        proto, t, spool = self.start(max_size=50)
        proto.dataReceived(b"LHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<control@" + F + b">\r\n"
                           b"RCPT TO:<dispatch@" + F + b">\r\nDATA\r\n" + b"x" * 60 + b"\r\n.\r\n")
        lines = replies(t)
        self.assertEqual([line[:10] for line in lines[-2:]], [b"552 5.3.4 "] * 2)
        self.assertEqual(spool.calls, [])

    def test_data_without_recipient(self):
        """DATA without an accepted recipient gets 503."""
        proto, t, _ = self.start()
        proto.dataReceived(b"LHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@elsewhere.org>\r\nDATA\r\n")
        self.assertEqual(replies(t)[-1], b"503 5.5.1 Error: need RCPT command")

    def test_unix_socket(self):
        """LHLO and delivery work for a UNIX socket peer."""
        proto, t, spool = self.start(peer=UNIXAddress(b"/run/lmtp"))
        proto.dataReceived(b"LHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<control@" + F + b">\r\n"
                           b"DATA\r\n" + MESSAGE)
        spool.fire_all()
        self.assertTrue(replies(t)[-1].startswith(b"250 2.0.0 <control@"))
        self.assertIn(b"with LMTP id", spool.calls[0][0])
