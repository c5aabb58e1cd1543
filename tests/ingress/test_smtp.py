"""
Protocol tests of the ESMTP server over StringTransport.
"""

from __future__ import annotations

import errno

from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.ingress import FQDN, FakeSpool, connect, replies

ENVELOPE = (
    b"EHLO client.example\r\n"
    b"MAIL FROM:<sender@example.com>\r\n"
    b"RCPT TO:<dispatch+foo@" + FQDN.encode() + b">\r\n"
    b"DATA\r\n"
)
MESSAGE = b"Subject: hello\r\nMessage-ID: <m1@example.com>\r\n\r\nbody line\r\n.\r\n"


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    tls_context = None

    def startTLS(self, ctx, normal=True):
        self.tls_context = ctx


class SMTPServerTests(SynchronousTestCase):
    def start(self, **kw):
        proto, transport, spool, clock = connect(**kw)
        self.assertEqual(replies(transport), [f"220 {FQDN} ESMTP trackermail".encode()])
        return proto, transport, spool, clock

    def test_ehlo_extensions(self):
        """EHLO lists PIPELINING, SIZE, 8BITMIME and ENHANCEDSTATUSCODES, no STARTTLS without a key."""
        proto, t, _, _ = self.start(max_size=4096)
        proto.dataReceived(b"EHLO me\r\n")
        self.assertEqual(replies(t), [
            f"250-{FQDN}".encode(), b"250-PIPELINING", b"250-SIZE 4096", b"250-8BITMIME",
            b"250 ENHANCEDSTATUSCODES"])

    def test_pipelined_no_250_before_spool(self):
        """A pipelined transaction gets no 250 for the data until the spool has it on disk."""
        proto, t, spool, _ = self.start()
        proto.dataReceived(ENVELOPE + MESSAGE + b"QUIT\r\n")
        lines = replies(t)
        self.assertEqual(lines[-3:], [b"250 2.1.0 Ok", b"250 2.1.5 Ok",
                                      b"354 End data with <CR><LF>.<CR><LF>"])
        self.assertEqual(len(spool.calls), 1)
        self.assertEqual(t.producerState, "paused")
        self.assertFalse(t.disconnecting)
        spool.fire_all()
        lines = replies(t)
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].startswith(b"250 2.0.0 Ok: queued as "))
        self.assertEqual(lines[1], b"221 2.0.0 Bye")
        self.assertEqual(t.producerState, "producing")
        self.assertTrue(t.disconnecting)

    def test_stored_form(self):
        """The stored copy has LF lines, dots unstuffed, a Received: line, and the envelope."""
        proto, t, spool, _ = self.start()
        proto.dataReceived(ENVELOPE + b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\n..dot\r\n"
                           b"\xe9t\xe9 8bit\r\n.\r\n")
        data, rcpt, sender, _ = spool.calls[0]
        self.assertEqual((rcpt, sender), (f"dispatch+foo@{FQDN}", "sender@example.com"))
        self.assertTrue(data.startswith(b"Received: from client.example ([192.0.2.7])\n\tby "
                                        + FQDN.encode()))
        self.assertIn(f"for <dispatch+foo@{FQDN}>;".encode(), data)
        self.assertTrue(data.endswith(b"Subject: x\nMessage-ID: <a@b>\n\n.dot\n\xe9t\xe9 8bit\n"))
        self.assertEqual(data.count(b"Message-ID"), 1)

    def test_message_id_added(self):
        """A message without Message-ID gets one at our domain."""
        proto, t, spool, _ = self.start()
        proto.dataReceived(ENVELOPE + b"Subject: x\r\n\r\nbody\r\n.\r\n")
        data = spool.calls[0][0]
        queue_id = spool.calls[0].envelope.queue_id
        self.assertTrue(data.endswith(b"\nMessage-ID: <" + queue_id.encode() + b"@"
                                      + FQDN.encode() + b">\nSubject: x\n\nbody\n"), data)

    def test_headerless_message(self):
        """A message without headers keeps its first line in the body."""
        proto, t, spool, _ = self.start()
        proto.dataReceived(ENVELOPE + b"just text\r\n.\r\n")
        data = spool.calls[0][0]
        self.assertTrue(data.endswith(b"@" + FQDN.encode() + b">\n\njust text\n"), data)

    def test_empty_message(self):
        """An empty message is stored, not a crash."""
        proto, t, spool, _ = self.start()
        proto.dataReceived(ENVELOPE + b".\r\n")
        self.assertEqual(len(spool.calls), 1)

    def test_byte_by_byte(self):
        """Input split at every byte gives the same replies and message."""
        proto, t, spool, _ = self.start()
        for b in ENVELOPE + MESSAGE:
            proto.dataReceived(bytes([b]))
        spool.fire_all()
        self.assertTrue(replies(t)[-1].startswith(b"250 2.0.0 Ok: queued"))
        self.assertTrue(spool.calls[0][0].endswith(b"\n\nbody line\n"))

    def test_relay_denied(self):
        """A recipient in another domain gets 550 5.7.1."""
        proto, t, _, _ = self.start()
        proto.dataReceived(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<x@example.com>\r\n")
        self.assertEqual(replies(t)[-1], b"550 5.7.1 <x@example.com>: Recipient address "
                                         b"rejected: Relay access denied")

    def test_unknown_recipient(self):
        """An unknown local part gets 550 5.1.1."""
        proto, t, _, _ = self.start()
        proto.dataReceived(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<nobody@" + FQDN.encode() + b">\r\n")
        self.assertTrue(replies(t)[-1].startswith(b"550 5.1.1 <nobody@"))

    def test_unqualified(self):
        """PKG@FQDN is accepted only when unqualified addresses are on."""
        cmd = b"MAIL FROM:<a@b.c>\r\nRCPT TO:<foo@" + FQDN.encode() + b">\r\n"
        proto, t, _, _ = self.start(accept_unqualified=True)
        proto.dataReceived(cmd)
        self.assertEqual(replies(t)[-1], b"250 2.1.5 Ok")

    def test_null_sender(self):
        """MAIL FROM:<> is accepted and stored as Return-Path <>."""
        proto, t, spool, _ = self.start()
        proto.dataReceived(ENVELOPE.replace(b"<sender@example.com>", b"<>") + MESSAGE)
        self.assertEqual(spool.calls[0][2], "")

    def test_size_parameter_too_big(self):
        """MAIL FROM with SIZE over the limit gets 552 5.3.4."""
        proto, t, _, _ = self.start(max_size=1000)
        proto.dataReceived(b"MAIL FROM:<a@b.c> SIZE=1001 BODY=8BITMIME\r\n"
                           b"MAIL FROM:<a@b.c> SIZE=1000 BODY=8BITMIME\r\n")
        self.assertEqual(replies(t), [b"552 5.3.4 Message size exceeds fixed limit",
                                      b"250 2.1.0 Ok"])

    def test_data_too_big(self):
        """Data over the limit is swallowed to the dot, answered 552 5.3.4, and never stored."""
        proto, t, spool, _ = self.start(max_size=1000)
        proto.dataReceived(ENVELOPE)
        replies(t)
        for _ in range(30):
            proto.dataReceived(b"x" * 98 + b"\r\n")
        proto.dataReceived(b".\r\nNOOP\r\n")
        self.assertEqual(replies(t), [b"552 5.3.4 Error: message file too big", b"250 2.0.0 Ok"])
        self.assertEqual(spool.calls, [])

    def test_data_at_limit(self):
        """A message of exactly the limit is accepted."""
        proto, t, spool, _ = self.start(max_size=100)
        proto.dataReceived(ENVELOPE + b"x" * 98 + b"\r\n.\r\n")
        self.assertEqual(len(spool.calls), 1)

    def test_disk_failure(self):
        """A spool write error gives 451 4.3.0, never 250."""
        proto, t, spool, _ = self.start()
        proto.dataReceived(ENVELOPE + MESSAGE + b"NOOP\r\n")
        replies(t)
        spool.calls[0][3].errback(OSError(errno.ENOSPC, "No space left on device"))
        self.assertEqual(replies(t), [b"451 4.3.0 Error: queue file write error",
                                      b"250 2.0.0 Ok"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_one_transaction_one_file(self):
        """
        All recipients of a transaction go into one spool file with their
        routes, so a 451 leaves nothing to process and a 250 covers all.
        """
        proto, t, spool, _ = self.start()
        proto.dataReceived(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<control@" + FQDN.encode() + b">\r\n"
                           b"RCPT TO:<dispatch+dpkg_bts@" + FQDN.encode() + b">\r\n"
                           b"DATA\r\n" + MESSAGE)
        replies(t)
        [stored] = spool.calls
        self.assertEqual(stored.envelope.recipients,
                         (f"control@{FQDN}", f"dispatch+dpkg_bts@{FQDN}"))
        self.assertEqual([(r.service, r.package, r.keyword) for r in stored.envelope.routes],
                         [("control", None, None), ("dispatch", "dpkg", "bts")])
        stored.deferred.errback(OSError(errno.EIO, "I/O error"))
        self.assertEqual(replies(t), [b"451 4.3.0 Error: queue file write error"])
        self.flushLoggedErrors(OSError)

    def test_duplicate_recipient_stored_once(self):
        """The same recipient twice is stored once."""
        proto, t, spool, _ = self.start()
        rcpt = b"RCPT TO:<control@" + FQDN.encode() + b">\r\n"
        proto.dataReceived(b"MAIL FROM:<a@b.c>\r\n" + rcpt + rcpt.upper() + b"DATA\r\n" + MESSAGE)
        self.assertEqual(spool.recipients, [f"control@{FQDN}"])

    def test_long_line_in_data_stays_body(self):
        """A 20 KiB line in the body does not end the message or turn body text into commands."""
        proto, t, spool, _ = self.start(max_size=100_000)
        proto.dataReceived(ENVELOPE)
        replies(t)
        proto.dataReceived(b"Subject: x\r\n\r\n" + b"a" * 20000)
        proto.dataReceived(b"\r\nQUIT\r\nRSET\r\n.\r\n")
        self.assertEqual(replies(t), [])
        self.assertFalse(t.disconnecting)
        self.assertTrue(spool.calls[0][0].endswith(b"a" * 20000 + b"\nQUIT\nRSET\n"))

    def test_long_command_line(self):
        """A command line over 16 KiB gets 500 5.5.2 and the next command works."""
        proto, t, _, _ = self.start()
        proto.dataReceived(b"NOOP " + b"x" * 20000)
        proto.dataReceived(b"y" * 100 + b"\r\nNOOP\r\n")
        self.assertEqual(replies(t), [b"500 5.5.2 Error: line too long", b"250 2.0.0 Ok"])

    def test_long_line_in_small_chunks_one_reply(self):
        """A 1 MiB line sent in 4 KiB pieces gets one 500, not one per piece."""
        proto, t, _, _ = self.start()
        for _ in range(256):
            proto.dataReceived(b"x" * 4096)
        proto.dataReceived(b"\r\nNOOP\r\n")
        self.assertEqual(replies(t), [b"500 5.5.2 Error: line too long", b"250 2.0.0 Ok"])

    def test_bare_lf_command(self):
        """A command ending in a bare LF is answered like one ending in CRLF."""
        proto, t, _, _ = self.start()
        proto.dataReceived(b"EHLO me\nNOOP\nMAIL FROM:<a@b.c>\n")
        lines = replies(t)
        self.assertEqual(lines[0], f"250-{FQDN}".encode())
        self.assertEqual(lines[-2:], [b"250 2.0.0 Ok", b"250 2.1.0 Ok"])

    def test_bare_lf_dot_does_not_end_data(self):
        """In DATA only CRLF.CRLF ends the message: a bare-LF dot is body text (smuggling)."""
        proto, t, spool, _ = self.start()
        proto.dataReceived(ENVELOPE + b"Subject: x\r\n\r\nline\n.\nMAIL FROM:<x@y.z>\r\n")
        self.assertEqual(spool.calls, [])
        proto.dataReceived(b".\r\n")
        self.assertIn(b"line\n.\nMAIL FROM:<x@y.z>\n", spool.calls[0].data)

    def test_sequence_errors(self):
        """RCPT before MAIL, DATA before RCPT and a second MAIL get 503 5.5.1."""
        proto, t, _, _ = self.start()
        proto.dataReceived(b"RCPT TO:<control@" + FQDN.encode() + b">\r\nDATA\r\n"
                           b"MAIL FROM:<a@b.c>\r\nDATA\r\nMAIL FROM:<a@b.c>\r\n")
        self.assertEqual(replies(t), [
            b"503 5.5.1 Error: need MAIL command", b"503 5.5.1 Error: need MAIL command",
            b"250 2.1.0 Ok", b"503 5.5.1 Error: need RCPT command",
            b"503 5.5.1 Error: nested MAIL command"])

    def test_misc_commands(self):
        """NOOP, RSET, VRFY, EXPN, HELP, AUTH, unknown and malformed commands answer with status codes."""
        proto, t, _, _ = self.start()
        proto.dataReceived(b"NOOP\r\nRSET\r\nVRFY root\r\nEXPN list\r\nHELP\r\nAUTH PLAIN\r\n"
                           b"BOGUS\r\n\r\nMAIL FROM:<a@b.c> NOTIFY=NEVER\r\nMAIL FROM:bad<\r\n"
                           b"\xff\xfe\r\n")
        lines = replies(t)
        self.assertEqual([line[:9] for line in lines], [
            b"250 2.0.0", b"250 2.0.0", b"252 2.5.2", b"502 5.5.1", b"214 2.0.0",
            b"503 5.5.1", b"500 5.5.2", b"500 5.5.2", b"555 5.5.4", b"501 5.5.4",
            b"500 5.5.2"])

    def test_every_reply_has_status(self):
        """After the greeting and EHLO every reply carries an enhanced status code."""
        proto, t, spool, _ = self.start()
        proto.dataReceived(ENVELOPE + MESSAGE)
        spool.fire_all()
        proto.dataReceived(b"RSET\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nQUIT\r\n")
        lines = replies(t)[6:]
        for line in lines:
            if not line.startswith(b"354"):
                self.assertRegex(line, rb"^\d{3} [245]\.\d+\.\d+ ")

    def test_pipelined_after_dot_wait(self):
        """Commands pipelined after the dot are answered after the message, in order."""
        proto, t, spool, _ = self.start()
        second = (b"MAIL FROM:<b@b.c>\r\nRCPT TO:<control@" + FQDN.encode() + b">\r\nDATA\r\n"
                  + MESSAGE)
        proto.dataReceived(ENVELOPE + MESSAGE + second)
        replies(t)
        proto.dataReceived(b"QUIT\r\n")
        self.assertEqual(len(spool.calls), 1)
        spool.calls[0][3].callback("/1")
        lines = replies(t)
        self.assertTrue(lines[0].startswith(b"250 2.0.0 Ok: queued"))
        self.assertEqual(lines[1:], [b"250 2.1.0 Ok", b"250 2.1.5 Ok",
                                     b"354 End data with <CR><LF>.<CR><LF>"])
        self.assertEqual(len(spool.calls), 2)
        spool.calls[1][3].callback("/2")
        lines = replies(t)
        self.assertTrue(lines[0].startswith(b"250 2.0.0 Ok: queued"))
        self.assertEqual(lines[1], b"221 2.0.0 Bye")

    def test_synchronous_spool(self):
        """A spool that answers at once still gives replies in order."""
        proto, t, spool, _ = self.start(spool=FakeSpool(auto=True))
        proto.dataReceived((ENVELOPE + MESSAGE) * 3 + b"QUIT\r\n")
        lines = replies(t)
        self.assertEqual(len(spool.calls), 3)
        self.assertEqual(sum(1 for line in lines if b"queued as" in line), 3)
        self.assertEqual(lines[-1], b"221 2.0.0 Bye")

    def test_connection_lost_while_storing(self):
        """A client that leaves while the message is being stored gets nothing written."""
        proto, t, spool, _ = self.start()
        proto.dataReceived(ENVELOPE + MESSAGE)
        replies(t)
        proto.connectionLost(None)
        spool.fire_all()
        self.assertEqual(t.value(), b"")

    def test_ehlo_over_unix_socket(self):
        """EHLO and the Received: line work for a UNIX socket peer."""
        proto, t, spool, _ = self.start(peer=UNIXAddress(None))
        proto.dataReceived(ENVELOPE + MESSAGE)
        self.assertEqual(replies(t)[0], f"250-{FQDN}".encode())
        self.assertIn(b"(local socket)", spool.calls[0][0])

    def test_helo(self):
        """HELO is answered without extensions."""
        proto, t, _, _ = self.start()
        proto.dataReceived(b"HELO me\r\n")
        self.assertEqual(replies(t), [f"250 {FQDN}".encode()])

    def test_timeout(self):
        """An idle client is told 421 4.4.2 and disconnected."""
        proto, t, _, clock = self.start()
        clock.advance(301)
        self.assertEqual(replies(t), [f"421 4.4.2 {FQDN} Error: timeout exceeded".encode()])
        self.assertTrue(t.disconnecting)


class STARTTLSTests(SynchronousTestCase):
    def start(self):
        t = TLSStringTransport()
        proto, t, spool, _ = connect(tls_context=object(), transport=t)
        replies(t)
        return proto, t, spool

    def test_advertised(self):
        """STARTTLS is advertised when a certificate is configured, and not after TLS started."""
        proto, t, _ = self.start()
        proto.dataReceived(b"EHLO me\r\n")
        self.assertIn(b"STARTTLS", [line[4:] for line in replies(t)])
        proto.dataReceived(b"STARTTLS\r\nEHLO me\r\n")
        lines = replies(t)
        self.assertEqual(lines[0], b"220 2.0.0 Ready to start TLS")
        self.assertNotIn(b"STARTTLS", [line[4:] for line in lines])
        self.assertIsNotNone(t.tls_context)

    def test_injection_dropped(self):
        """Commands pipelined after STARTTLS in plaintext are discarded."""
        proto, t, spool = self.start()
        proto.dataReceived(b"EHLO me\r\nSTARTTLS\r\nMAIL FROM:<evil@x.org>\r\nRCPT TO:<control@"
                           + FQDN.encode() + b">\r\n")
        lines = replies(t)
        self.assertEqual(lines[-1], b"220 2.0.0 Ready to start TLS")
        proto.dataReceived(b"RCPT TO:<control@" + FQDN.encode() + b">\r\n")
        self.assertEqual(replies(t), [b"503 5.5.1 Error: need MAIL command"])

    def test_mail_needs_ehlo_after_starttls(self):
        """After STARTTLS, MAIL is refused until the client says EHLO again."""
        proto, t, _ = self.start()
        proto.dataReceived(b"EHLO me\r\nSTARTTLS\r\n")
        replies(t)
        proto.dataReceived(b"MAIL FROM:<a@b.c>\r\nEHLO me\r\nMAIL FROM:<a@b.c>\r\n")
        lines = replies(t)
        self.assertEqual(lines[0], b"503 5.5.1 Error: send EHLO first (after STARTTLS)")
        self.assertEqual(lines[-1], b"250 2.1.0 Ok")

    def test_session_reset(self):
        """A transaction begun before STARTTLS is forgotten."""
        proto, t, _ = self.start()
        proto.dataReceived(b"EHLO me\r\nMAIL FROM:<a@b.c>\r\n")
        proto.dataReceived(b"STARTTLS\r\n")
        proto.dataReceived(b"DATA\r\n")
        self.assertEqual(replies(t)[-1], b"503 5.5.1 Error: need MAIL command")

    def test_not_available(self):
        """Without a certificate STARTTLS gets 454 4.7.0."""
        proto, t, _, _ = connect()
        replies(t)
        proto.dataReceived(b"STARTTLS\r\n")
        self.assertEqual(replies(t), [b"454 4.7.0 TLS not available"])


class ReceivedLogTests(SynchronousTestCase):
    def message_id(self, data: bytes) -> str:
        from trackermail.ingress.stamping import Stamper

        stamper = Stamper(b"Received: by us\n", FQDN, "Q1")
        stamper.feed(data)
        stamper.finish()
        return stamper.message_id

    def test_message_id_of_stored_message(self):
        """The received log line names the Message-ID found in the header block only."""
        self.assertEqual(self.message_id(b"Subject: x\nMessage-Id:  <a@b>\n\nMessage-ID: <no>\n"),
                         "<a@b>")
        self.assertEqual(self.message_id(b"Subject: x\n\nMessage-ID: <body@x>\n"),
                         f"<Q1@{FQDN}>")
        self.assertEqual(self.message_id(b"Message-ID: <\xff\x01@x>\n\n"), "<??@x>")
