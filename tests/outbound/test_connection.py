"""
Tests for L{trackermail.outbound.connection} (and its setup half,
L{trackermail.outbound.session}): one SMTP session driven by a scripted
server over a StringTransport.
"""

from __future__ import annotations

import base64
from collections import deque

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from trackermail.outbound.connection import ClientSettings, SMTPConnection, Transaction
from trackermail.outbound.interface import (
    CONNECT,
    DATA,
    LOCAL,
    MAIL,
    RCPT,
    SESSION,
    Reply,
)


class ListSource:
    def __init__(self):
        self.queue: deque[Transaction] = deque()
        self.ready = []
        self.failed = []
        self.closed = []

    def add(self, mail_from, recipients, data=b"Subject: hi\r\n\r\nbody\r\n"):
        txn = Transaction(mail_from, recipients, data)
        self.queue.append(txn)
        return txn.deferred

    def next_transaction(self, conn):
        return self.queue.popleft() if self.queue else None

    def connection_ready(self, conn):
        self.ready.append(conn)

    def connection_failed(self, conn, result):
        self.failed.append(result)

    def connection_closed(self, conn, requeue):
        self.closed.append(requeue)


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    tls_options = None

    def startTLS(self, options):
        self.tls_options = options


EXT = (b"PIPELINING", b"SIZE 100000", b"8BITMIME", b"ENHANCEDSTATUSCODES")


def ehlo_reply(extensions=EXT) -> bytes:
    lines = [b"mx.example"] + list(extensions)
    return b"".join(b"250-" + line + b"\r\n" for line in lines[:-1]) + b"250 " + lines[-1] + b"\r\n"


class SessionMixin:
    def session(self, extensions=EXT, transport=None, **kw):
        """
        A connection past greeting and EHLO, with nothing written yet.
        """
        kw.setdefault("helo", "client.example")
        self.clock = Clock()
        self.source = ListSource()
        self.conn = SMTPConnection(self.source, ClientSettings(**kw), self.clock)
        self.transport = transport or StringTransport()
        self.conn.makeConnection(self.transport)
        self.server(b"220 mx.example ESMTP\r\n")
        self.assertEqual(self.sent(), b"EHLO client.example\r\n")
        if extensions is not None:
            self.server(ehlo_reply(extensions))
        return self.conn

    def server(self, data: bytes) -> None:
        self.conn.dataReceived(data)

    def sent(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    def send(self, mail_from, recipients, data=b"Subject: hi\r\n\r\nbody\r\n"):
        d = self.source.add(mail_from, recipients, data)
        self.conn.take_work()
        return d

class PipeliningTests(SessionMixin, SynchronousTestCase):
    def test_envelope_in_one_write(self):
        """With PIPELINING, MAIL, every RCPT and DATA leave in one write."""
        self.session()
        d = self.send("bounces@t.example", ["a@x.example", "b@x.example"])
        self.assertEqual(self.transport.io.getvalue(), b"".join([
            b"MAIL FROM:<bounces@t.example> SIZE=21\r\n",
            b"RCPT TO:<a@x.example>\r\n",
            b"RCPT TO:<b@x.example>\r\n",
            b"DATA\r\n",
        ]))
        self.sent()
        self.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n")
        self.assertEqual(self.sent(), b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        self.assertNoResult(d)
        self.server(b"250 2.0.0 Ok: queued as 1\r\n")
        self.assertEqual(self.successResultOf(d), {
            "a@x.example": Reply(250, "2.0.0 Ok: queued as 1", DATA),
            "b@x.example": Reply(250, "2.0.0 Ok: queued as 1", DATA),
        })

    def test_next_envelope_follows_final_dot_in_same_write(self):
        """After the final dot, the next transaction's envelope goes in the same write."""
        self.session()
        d1 = self.send("s1@t.example", ["a@x.example"], b"one\n")
        d2 = self.source.add("s2@t.example", ["b@x.example"], b"two\n")
        self.sent()
        self.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(self.transport.io.getvalue(), b"".join([
            b"one\r\n.\r\n",
            b"MAIL FROM:<s2@t.example> SIZE=5\r\nRCPT TO:<b@x.example>\r\nDATA\r\n",
        ]))
        self.assertEqual(len(self.transport.io.getvalue()), len(self.sent()))
        self.server(b"250 2.0.0 queued 1\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(self.successResultOf(d1), {"a@x.example": Reply(250, "2.0.0 queued 1", DATA)})
        self.assertEqual(self.sent(), b"two\r\n.\r\n")
        self.server(b"250 2.0.0 queued 2\r\n")
        self.assertEqual(self.successResultOf(d2), {"b@x.example": Reply(250, "2.0.0 queued 2", DATA)})

    def test_mixed_recipient_results(self):
        """Each recipient gets its own RCPT reply or, if accepted, the end-of-data reply."""
        self.session()
        d = self.send("s@t.example", ["ok@x", "gone@x", "full@x"])
        self.sent()
        self.server(b"250 ok\r\n250 ok\r\n550 5.1.1 <gone@x>: unknown\r\n"
                    b"452 4.2.2 mailbox full\r\n354 go\r\n")
        self.sent()
        self.server(b"250 2.0.0 queued\r\n")
        self.assertEqual(self.successResultOf(d), {
            "ok@x": Reply(250, "2.0.0 queued", DATA),
            "gone@x": Reply(550, "5.1.1 <gone@x>: unknown", RCPT),
            "full@x": Reply(452, "4.2.2 mailbox full", RCPT),
        })

    def test_mail_rejected(self):
        """A rejected MAIL FROM gives its reply to every recipient; the next transaction starts with RSET."""
        self.session()
        d = self.send("bad@t.example", ["a@x", "b@x"])
        self.sent()
        self.server(b"553 5.7.1 sender rejected\r\n503 5.5.1 need MAIL\r\n"
                    b"503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n")
        self.assertEqual(self.successResultOf(d), {
            "a@x": Reply(553, "5.7.1 sender rejected", MAIL),
            "b@x": Reply(553, "5.7.1 sender rejected", MAIL)})
        self.send("good@t.example", ["a@x"])
        self.assertTrue(self.sent().startswith(b"RSET\r\nMAIL FROM:<good@t.example>"))

    def test_mail_temporary_failure(self):
        """A 4xx to MAIL FROM is a temporary failure for every recipient."""
        self.session()
        d = self.send("s@t.example", ["a@x"])
        self.server(b"451 4.3.0 try later\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n")
        self.assertEqual(self.successResultOf(d), {"a@x": Reply(451, "4.3.0 try later", MAIL)})

    def test_all_recipients_rejected(self):
        """When every RCPT is refused, no content is sent and each recipient keeps its reply."""
        self.session()
        d = self.send("s@t.example", ["a@x", "b@x"])
        self.sent()
        self.server(b"250 ok\r\n550 5.1.1 no a\r\n450 4.1.1 no b\r\n554 5.5.1 no valid recipients\r\n")
        self.assertEqual(self.successResultOf(d), {
            "a@x": Reply(550, "5.1.1 no a", RCPT), "b@x": Reply(450, "4.1.1 no b", RCPT)})
        self.assertEqual(self.sent(), b"")
        self.send("s@t.example", ["c@x"])
        self.assertTrue(self.sent().startswith(b"RSET\r\nMAIL"))

    def test_data_command_rejected(self):
        """A refused DATA command gives its reply to every accepted recipient."""
        self.session()
        d = self.send("s@t.example", ["a@x", "b@x"])
        self.server(b"250 ok\r\n250 ok\r\n550 5.1.1 no b\r\n451 4.3.0 queue full\r\n")
        self.assertEqual(self.successResultOf(d), {
            "a@x": Reply(451, "4.3.0 queue full", DATA), "b@x": Reply(550, "5.1.1 no b", RCPT)})

    def test_end_of_data_rejected(self):
        """A permanent end-of-data reply is every accepted recipient's result."""
        self.session()
        d = self.send("s@t.example", ["a@x"])
        self.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.server(b"554 5.7.1 spam\r\n")
        self.assertEqual(self.successResultOf(d), {"a@x": Reply(554, "5.7.1 spam", DATA)})
        self.sent()
        self.send("s@t.example", ["a@x"])
        self.assertTrue(self.sent().startswith(b"MAIL"), "no RSET needed after end of data")

    def test_354_without_accepted_recipients(self):
        """A server that answers 354 although every RCPT failed gets an empty message ended at once."""
        self.session()
        d = self.send("s@t.example", ["a@x"])
        self.sent()
        self.server(b"250 ok\r\n550 5.1.1 no\r\n354 go\r\n")
        self.assertEqual(self.sent(), b".\r\n")
        self.assertEqual(self.successResultOf(d), {"a@x": Reply(550, "5.1.1 no", RCPT)})
        self.server(b"554 5.5.1 no message\r\n")
        self.send("s@t.example", ["b@x"])
        self.assertTrue(self.sent().startswith(b"MAIL"))

    def test_sequence_error_is_temporary(self):
        """A 503 (our session confused) is reported as a 4xx, never as a permanent failure."""
        self.session()
        d = self.send("s@t.example", ["a@x"])
        self.server(b"503 5.5.1 nested MAIL\r\n503 x\r\n503 x\r\n")
        code, text, stage = self.successResultOf(d)["a@x"]
        self.assertEqual((code, stage), (451, SESSION))
        self.assertIn("503 5.5.1 nested MAIL", text)

    def test_multiline_reply_text(self):
        """Multi-line replies are read whole and their text joined."""
        self.session()
        d = self.send("s@t.example", ["a@x"])
        self.server(b"250 ok\r\n550-5.1.1 first\r\n550-5.1.1 second\r\n550 5.1.1 third\r\n554 no\r\n")
        self.assertEqual(self.successResultOf(d),
                         {"a@x": Reply(550, "5.1.1 first 5.1.1 second 5.1.1 third", RCPT)})

    def test_replies_split_across_reads(self):
        """Replies split at any byte still parse."""
        self.session()
        d = self.send("s@t.example", ["a@x"])
        for byte in b"250 ok\r\n250 ok\r\n354 go\r\n":
            self.server(bytes([byte]))
        self.sent()
        for byte in b"250 2.0.0 done\r\n":
            self.server(bytes([byte]))
        self.assertEqual(self.successResultOf(d), {"a@x": Reply(250, "2.0.0 done", DATA)})

    def test_null_sender_and_duplicates(self):
        """An empty sender is <>, and a recipient listed twice is sent to once."""
        self.session()
        d = self.send("", ["a@x", "a@x"])
        self.assertEqual(self.sent().split(b"\r\n")[:3],
                         [b"MAIL FROM:<> SIZE=21", b"RCPT TO:<a@x>", b"DATA"])
        self.server(b"250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n")
        self.assertEqual(self.successResultOf(d), {"a@x": Reply(250, "done", DATA)})

    def test_crlf_data_sent_verbatim(self):
        """CRLF message bytes, folded headers and 8-bit text go out unchanged."""
        self.session()
        data = b"Subject: =?utf-8?q?x?=\r\n folded\r\nX: \xe9\r\n\r\nbody\r\n"
        self.send("s@t.example", ["a@x"], data)
        mail = self.sent().split(b"\r\n")[0]
        self.assertEqual(mail, b"MAIL FROM:<s@t.example> SIZE=%d BODY=8BITMIME" % len(data))
        self.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(self.sent(), data + b".\r\n")

    def test_no_8bitmime_no_size(self):
        """Without SIZE or 8BITMIME offered, MAIL FROM carries no parameters."""
        self.session(extensions=(b"PIPELINING",))
        self.send("s@t.example", ["a@x"], b"\xe9\n")
        self.assertEqual(self.sent().split(b"\r\n")[0], b"MAIL FROM:<s@t.example>")

    def test_oversize_is_permanent_failure(self):
        """A message over the advertised SIZE is refused with 552 5.3.4 and not sent."""
        self.session(extensions=(b"PIPELINING", b"SIZE 100"))
        d = self.send("s@t.example", ["a@x", "b@x"], b"x" * 200)
        self.assertEqual(self.sent(), b"")
        results = self.successResultOf(d)
        self.assertEqual({(code, stage) for code, _, stage in results.values()}, {(552, LOCAL)})
        self.assertTrue(results["a@x"][1].startswith("5.3.4 "))

    def test_bad_addresses(self):
        """Addresses with line breaks or angle brackets are refused locally, never written."""
        self.session()
        d = self.send("s@t.example", ["a@x\r\nRCPT TO:<evil@x>", "<b@x>", "ok@x"])
        self.assertNotIn(b"evil", self.sent())
        self.server(b"250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n")
        results = self.successResultOf(d)
        self.assertEqual(results["a@x\r\nRCPT TO:<evil@x>"][::2], (501, LOCAL))
        self.assertEqual(results["<b@x>"][::2], (501, LOCAL))
        self.assertEqual(results["ok@x"], Reply(250, "done", DATA))

    def test_bad_sender(self):
        """A sender with a line break fails every recipient permanently without a command."""
        self.session()
        d = self.send("s@t\n.example", ["a@x"])
        self.assertEqual(self.sent(), b"")
        self.assertEqual(self.successResultOf(d), {"a@x": Reply(501, "5.1.7 bad address syntax", LOCAL)})

    def test_non_ascii_without_smtputf8(self):
        """A non-ASCII recipient gets 553 5.6.7 when the server lacks SMTPUTF8."""
        self.session()
        d = self.send("s@t.example", ["j\xf6rg@x"])
        self.assertEqual(self.sent(), b"")
        code, text, stage = self.successResultOf(d)["j\xf6rg@x"]
        self.assertEqual((code, text[:5], stage), (553, "5.6.7", LOCAL))

    def test_non_ascii_with_smtputf8(self):
        """With SMTPUTF8 offered, UTF-8 addresses are sent with the SMTPUTF8 parameter."""
        self.session(extensions=(b"PIPELINING", b"SMTPUTF8"))
        self.send("s@t.example", ["j\xf6rg@x"])
        self.assertEqual(self.sent().split(b"\r\n")[:2],
                         [b"MAIL FROM:<s@t.example> SMTPUTF8", "RCPT TO:<j\xf6rg@x>".encode()])

    def test_no_recipients(self):
        """A send with an empty recipient list answers at once with nothing."""
        self.session()
        d = self.send("s@t.example", [])
        self.assertEqual(self.successResultOf(d), {})
        self.assertEqual(self.sent(), b"")


class LockStepTests(SessionMixin, SynchronousTestCase):
    EXT = (b"SIZE 100000", b"8BITMIME")

    def test_one_command_per_reply(self):
        """Without PIPELINING every command waits for the previous reply."""
        self.session(extensions=self.EXT)
        d = self.send("s@t.example", ["a@x", "b@x"], b"hi\n")
        self.assertEqual(self.sent(), b"MAIL FROM:<s@t.example> SIZE=4\r\n")
        self.server(b"250 ok\r\n")
        self.assertEqual(self.sent(), b"RCPT TO:<a@x>\r\n")
        self.server(b"250 ok\r\n")
        self.assertEqual(self.sent(), b"RCPT TO:<b@x>\r\n")
        self.server(b"550 5.1.1 no\r\n")
        self.assertEqual(self.sent(), b"DATA\r\n")
        self.server(b"354 go\r\n")
        self.assertEqual(self.sent(), b"hi\r\n.\r\n")
        self.source.add("s2@t.example", ["c@x"])
        self.conn.take_work()
        self.assertEqual(self.sent(), b"", "no second transaction before the end-of-data reply")
        self.server(b"250 done\r\n")
        self.assertEqual(self.successResultOf(d), {"a@x": Reply(250, "done", DATA),
                                                    "b@x": Reply(550, "5.1.1 no", RCPT)})
        self.assertEqual(self.sent(), b"MAIL FROM:<s2@t.example> SIZE=21\r\n")

    def test_mail_rejected_skips_recipients(self):
        """Without PIPELINING a rejected MAIL FROM sends no RCPT; the next transaction starts with RSET."""
        self.session(extensions=self.EXT)
        d = self.send("s@t.example", ["a@x"])
        self.sent()
        self.server(b"451 4.3.0 later\r\n")
        self.assertEqual(self.successResultOf(d), {"a@x": Reply(451, "4.3.0 later", MAIL)})
        self.assertEqual(self.sent(), b"")
        self.send("s@t.example", ["a@x"])
        self.assertEqual(self.sent(), b"RSET\r\n")
        self.server(b"250 ok\r\n")
        self.assertTrue(self.sent().startswith(b"MAIL"))

    def test_all_recipients_rejected_skips_data(self):
        """Without PIPELINING, DATA is not sent when no recipient was accepted."""
        self.session(extensions=self.EXT)
        d = self.send("s@t.example", ["a@x"])
        self.server(b"250 ok\r\n")
        self.sent()
        self.server(b"550 5.1.1 no\r\n")
        self.assertEqual(self.sent(), b"")
        self.assertEqual(self.successResultOf(d), {"a@x": Reply(550, "5.1.1 no", RCPT)})

    def test_helo_fallback(self):
        """A server that refuses EHLO gets HELO and plain lock-step SMTP."""
        self.session(extensions=None)
        self.server(b"502 5.5.2 EHLO not implemented\r\n")
        self.assertEqual(self.sent(), b"HELO client.example\r\n")
        self.server(b"250 mx\r\n")
        self.assertEqual(self.source.ready, [self.conn])
        self.send("s@t.example", ["a@x"])
        self.assertEqual(self.sent(), b"MAIL FROM:<s@t.example>\r\n")


class SessionTests(SessionMixin, SynchronousTestCase):
    def test_extensions_parsed(self):
        """EHLO keywords and parameters are read from every line, old AUTH= form included."""
        conn = self.session(extensions=(b"pipelining", b"SIZE 1234", b"AUTH=LOGIN",
                                        b"AUTH PLAIN CRAM-MD5", b"8BITMIME"))
        self.assertTrue(conn.pipelining)
        self.assertEqual(conn.max_size, 1234)
        self.assertEqual(conn.extensions["AUTH"], ["LOGIN", "PLAIN", "CRAM-MD5"])
        self.assertEqual(self.source.ready, [conn])

    def test_size_zero_means_no_limit(self):
        """SIZE 0 (or without a number) sets no limit."""
        conn = self.session(extensions=(b"SIZE 0",))
        self.assertEqual(conn.max_size, 0)

    def test_421_greeting(self):
        """A 421 greeting makes the connection fail with a 4xx before EHLO."""
        self.clock = Clock()
        self.source = ListSource()
        self.conn = SMTPConnection(self.source, ClientSettings(helo="c.example"), self.clock)
        self.transport = StringTransport()
        self.conn.makeConnection(self.transport)
        self.server(b"421 4.3.2 too busy\r\n")
        self.assertEqual(self.sent(), b"")
        self.conn.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.source.failed), 1)
        code, text, stage = self.source.failed[0]
        self.assertEqual((code, stage), (421, CONNECT))
        self.assertIn("too busy", text)

    def test_554_greeting(self):
        """A 554 greeting fails the connection with a 4xx and a QUIT."""
        self.clock = Clock()
        self.source = ListSource()
        self.conn = SMTPConnection(self.source, ClientSettings(helo="c.example"), self.clock)
        self.transport = StringTransport()
        self.conn.makeConnection(self.transport)
        self.server(b"554 go away\r\n")
        self.assertEqual(self.sent(), b"QUIT\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.conn.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.source.failed[0][::2], (421, CONNECT))
        self.assertIn("refused the session: 554 go away", self.source.failed[0].text)

    def test_421_mid_envelope(self):
        """A 421 before the content was sent closes the session and hands the message back once."""
        self.session()
        d = self.send("s@t.example", ["a@x", "b@x"])
        self.server(b"250 ok\r\n250 ok\r\n421 4.4.2 shutting down\r\n")
        self.assertTrue(self.transport.disconnected)
        self.conn.connectionLost(Failure(ConnectionDone()))
        self.assertNoResult(d)
        [[txn]] = self.source.closed
        self.assertEqual(txn.results, {})

    def test_421_mid_envelope_second_time(self):
        """A message already handed back once gets 421 for every recipient on the next 421."""
        self.session()
        txn = Transaction("s@t.example", ["a@x", "b@x"], b"x\n")
        txn.requeued = 1
        self.source.queue.append(txn)
        self.conn.take_work()
        self.server(b"421 4.4.2 shutting down\r\n")
        self.conn.connectionLost(Failure(ConnectionDone()))
        results = self.successResultOf(txn.deferred)
        self.assertEqual({(code, stage) for code, _, stage in results.values()},
                         {(421, SESSION)})
        self.assertIn("closed the session: 421 4.4.2 shutting down", results["a@x"][1])

    def test_421_after_content(self):
        """A 421 as the end-of-data reply is every accepted recipient's (temporary) result."""
        self.session()
        d = self.send("s@t.example", ["a@x"])
        self.server(b"250 ok\r\n250 ok\r\n354 go\r\n421 4.3.0 out of memory\r\n")
        self.conn.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(d), {"a@x": Reply(421, "4.3.0 out of memory", DATA)})

    def test_unsolicited_421(self):
        """A 421 while idle closes the connection quietly."""
        self.session()
        self.server(b"421 4.4.2 idle too long\r\n")
        self.assertTrue(self.transport.disconnected)
        self.conn.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.source.closed, [[]])

    def test_drop_after_content_sent(self):
        """A connection lost after the content was sent gives accepted recipients 421 4.4.2."""
        self.session()
        d = self.send("s@t.example", ["a@x", "b@x"])
        self.server(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n")
        with capturedLogs() as events:
            self.conn.connectionLost(Failure(ConnectionLost("reset by peer")))
        results = self.successResultOf(d)
        self.assertEqual(results["b@x"], Reply(550, "5.1.1 no", RCPT))
        self.assertEqual(results["a@x"][0], 421)
        self.assertTrue(results["a@x"][1].startswith("4.4.2 "))
        self.assertIn("reset by peer", results["a@x"][1])
        self.assertTrue(any(e["log_level"] == LogLevel.warn for e in events))
        self.assertEqual(self.source.closed, [[]])

    def test_drop_before_content_requeues(self):
        """A transaction whose content was never sent is handed back once to be retried elsewhere."""
        self.session()
        d = self.send("s@t.example", ["a@x"])
        self.server(b"250 ok\r\n")
        self.conn.connectionLost(Failure(ConnectionDone()))
        self.assertNoResult(d)
        [requeued] = self.source.closed
        self.assertEqual(len(requeued), 1)
        self.assertEqual(requeued[0].requeued, 1)

    def test_drop_twice_fails(self):
        """A transaction already handed back once gets a 4xx on the next drop."""
        self.session()
        txn = Transaction("s@t.example", ["a@x"], b"x\n")
        txn.requeued = 1
        self.source.queue.append(txn)
        self.conn.take_work()
        self.conn.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(txn.deferred)["a@x"][0], 421)

    def test_malformed_reply(self):
        """A reply that is not SMTP closes the connection and fails the transaction with a 4xx."""
        self.session()
        d = self.send("s@t.example", ["a@x"])
        self.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.server(b"HTTP/1.1 400 Bad Request\r\n")
        self.assertTrue(self.transport.disconnected)
        self.conn.connectionLost(Failure(ConnectionDone()))
        code, text, stage = self.successResultOf(d)["a@x"]
        self.assertEqual((code, stage), (421, SESSION))
        self.assertIn("protocol error", text)

    def test_short_reply_line(self):
        """A two-digit reply is a protocol error, not code 25."""
        self.session()
        d = self.send("s@t.example", ["a@x"])
        self.server(b"25\r\n")
        self.assertTrue(self.transport.disconnected)
        self.conn.connectionLost(Failure(ConnectionDone()))
        self.assertNoResult(d)
        self.assertEqual(len(self.source.closed[0]), 1, "handed back for another connection")

    def test_endless_reply_line(self):
        """A reply line longer than 64 KiB is a protocol error, not unbounded memory."""
        self.session()
        self.server(b"2" * 70000)
        self.assertTrue(self.transport.disconnected)

    def test_reply_timeout(self):
        """A server that stops answering is dropped after the timeout; recipients get a 4xx."""
        self.session(timeout=30)
        d = self.send("s@t.example", ["a@x"])
        self.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.clock.advance(29)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnected)
        self.conn.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.successResultOf(d)["a@x"], Reply(421, "4.4.2 timeout waiting for smarthost", SESSION))

    def test_replies_keep_timeout_alive(self):
        """Each reply restarts the timeout."""
        self.session(timeout=30)
        d = self.send("s@t.example", ["a@x"])
        self.clock.advance(20)
        self.server(b"250 ok\r\n")
        self.clock.advance(20)
        self.server(b"250 ok\r\n354 go\r\n250 done\r\n")
        self.assertEqual(self.successResultOf(d), {"a@x": Reply(250, "done", DATA)})
        self.assertFalse(self.transport.disconnected)

    def test_idle_timeout_quits(self):
        """An idle connection says QUIT after idle_timeout seconds without work."""
        self.session(idle_timeout=60)
        d = self.send("s@t.example", ["a@x"])
        self.clock.advance(59)
        self.server(b"250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n")
        self.successResultOf(d)
        self.sent()
        self.clock.advance(59)
        self.assertEqual(self.sent(), b"")
        self.clock.advance(1)
        self.assertEqual(self.sent(), b"QUIT\r\n")
        self.assertFalse(self.conn.can_accept())
        self.server(b"221 2.0.0 bye\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.conn.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.source.closed, [[]])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_max_transactions(self):
        """After max_transactions the connection finishes and says QUIT."""
        self.session(max_transactions=1)
        self.source.add("s@t.example", ["a@x"])
        self.source.add("s@t.example", ["b@x"])
        self.conn.take_work()
        self.sent()
        self.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertNotIn(b"MAIL", self.sent())
        self.server(b"250 done\r\n")
        self.assertEqual(self.sent(), b"QUIT\r\n")
        self.assertEqual(len(self.source.queue), 1)

    def test_retire(self):
        """retire() lets the running transaction finish, then says QUIT."""
        self.session()
        d = self.send("s@t.example", ["a@x"])
        self.sent()
        self.conn.retire()
        self.assertEqual(self.sent(), b"")
        self.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.server(b"250 done\r\n")
        self.successResultOf(d)
        self.assertTrue(self.sent().endswith(b"QUIT\r\n"))

    def test_nodelay(self):
        """TCP_NODELAY is switched on when the transport supports it."""
        calls = []
        transport = StringTransport()
        transport.setTcpNoDelay = calls.append
        self.session(transport=transport)
        self.assertEqual(calls, [True])


class TLSTests(SessionMixin, SynchronousTestCase):
    def start(self, starttls="required", **kw):
        self.options = object()
        self.session(extensions=None, transport=TLSStringTransport(), starttls=starttls,
                     tls_options=self.options, **kw)

    def test_starttls(self):
        """STARTTLS is sent, TLS started with the configured options, and EHLO repeated."""
        self.start()
        self.server(ehlo_reply((b"PIPELINING", b"STARTTLS")))
        self.assertEqual(self.sent(), b"STARTTLS\r\n")
        self.server(b"220 2.0.0 ready\r\n")
        self.assertIs(self.transport.tls_options, self.options)
        self.assertEqual(self.sent(), b"EHLO client.example\r\n")
        self.assertEqual(self.source.ready, [])
        self.server(ehlo_reply((b"PIPELINING", b"SIZE 10")))
        self.assertEqual(self.source.ready, [self.conn])
        self.assertTrue(self.conn.tls)
        self.assertEqual(self.conn.max_size, 10)

    def test_plaintext_after_starttls_reply_is_dropped(self):
        """Replies injected in clear after the 220 to STARTTLS are ignored."""
        self.start()
        self.server(ehlo_reply((b"PIPELINING", b"STARTTLS")))
        self.sent()
        self.server(b"220 2.0.0 ready\r\n250 injected\r\n")
        self.assertEqual(self.source.ready, [])
        self.server(ehlo_reply())
        self.assertEqual(self.source.ready, [self.conn])

    def test_required_but_not_offered(self):
        """starttls = required and no STARTTLS offered: nothing is sent in clear; 4xx and an error log."""
        with capturedLogs() as events:
            self.start()
            self.server(ehlo_reply())
        self.assertEqual(self.sent(), b"QUIT\r\n")
        self.conn.connectionLost(Failure(ConnectionDone()))
        [(code, text, stage)] = self.source.failed
        self.assertEqual((code, stage), (421, CONNECT))
        self.assertTrue(text.startswith("4.7.0 "))
        self.assertIn("refusing to send in clear", text)
        self.assertTrue(any(e["log_level"] == LogLevel.error for e in events))

    def test_required_but_refused(self):
        """starttls = required and STARTTLS refused: the connection fails with a 4xx."""
        self.start()
        self.server(ehlo_reply((b"STARTTLS",)))
        self.sent()
        self.server(b"454 4.7.0 TLS not available\r\n")
        self.conn.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.source.failed[0][0], 421)

    def test_opportunistic_not_offered(self):
        """starttls = opportunistic sends in clear when STARTTLS is not offered."""
        self.start(starttls="opportunistic")
        self.server(ehlo_reply())
        self.assertEqual(self.source.ready, [self.conn])
        self.assertFalse(self.conn.tls)

    def test_opportunistic_refused(self):
        """starttls = opportunistic goes on in clear when STARTTLS is refused."""
        self.start(starttls="opportunistic")
        self.server(ehlo_reply((b"STARTTLS",)))
        self.sent()
        self.server(b"454 4.7.0 TLS not available\r\n")
        self.assertEqual(self.source.ready, [self.conn])

    def test_handshake_failure(self):
        """A TLS failure (e.g. a certificate for another name) fails the connection with 4.7.0, logged."""
        self.start()
        self.server(ehlo_reply((b"STARTTLS",)))
        self.server(b"220 ready\r\n")
        with capturedLogs() as events:
            self.conn.connectionLost(Failure(ConnectionLost("certificate verify failed")))
        [(code, text, stage)] = self.source.failed
        self.assertEqual((code, stage), (421, CONNECT))
        self.assertTrue(text.startswith("4.7.0 TLS with smarthost failed"))
        self.assertIn("certificate verify failed", text)
        self.assertTrue(any(e["log_level"] == LogLevel.error for e in events))

    def test_auth_plain(self):
        """AUTH PLAIN is sent after TLS with the configured credentials."""
        self.start(username="tracker", password="s3cret")
        self.server(ehlo_reply((b"STARTTLS",)))
        self.server(b"220 ready\r\n")
        self.sent()
        self.server(ehlo_reply((b"AUTH LOGIN PLAIN",)))
        token = base64.b64encode(b"\0tracker\0s3cret")
        self.assertEqual(self.sent(), b"AUTH PLAIN " + token + b"\r\n")
        self.assertEqual(self.source.ready, [])
        self.server(b"235 2.7.0 ok\r\n")
        self.assertEqual(self.source.ready, [self.conn])

    def test_auth_login(self):
        """AUTH LOGIN is used when PLAIN is not offered."""
        self.start(username="tracker", password="s3cret")
        self.server(ehlo_reply((b"STARTTLS",)))
        self.server(b"220 ready\r\n")
        self.sent()
        self.server(ehlo_reply((b"AUTH LOGIN",)))
        self.assertEqual(self.sent(), b"AUTH LOGIN\r\n")
        self.server(b"334 VXNlcm5hbWU6\r\n")
        self.assertEqual(self.sent(), base64.b64encode(b"tracker") + b"\r\n")
        self.server(b"334 UGFzc3dvcmQ6\r\n")
        self.assertEqual(self.sent(), base64.b64encode(b"s3cret") + b"\r\n")
        self.server(b"235 2.7.0 ok\r\n")
        self.assertEqual(self.source.ready, [self.conn])

    def test_auth_rejected(self):
        """Rejected credentials fail the connection with a 4xx and an error log."""
        self.start(username="tracker", password="bad")
        self.server(ehlo_reply((b"STARTTLS",)))
        self.server(b"220 ready\r\n")
        self.server(ehlo_reply((b"AUTH PLAIN",)))
        with capturedLogs() as events:
            self.server(b"535 5.7.8 bad credentials\r\n")
        self.conn.connectionLost(Failure(ConnectionDone()))
        [(code, text, stage)] = self.source.failed
        self.assertEqual((code, stage), (421, CONNECT))
        self.assertIn("535 5.7.8", text)
        self.assertNotIn("bad", [e.get("password") for e in events])

    def test_no_auth_in_clear(self):
        """Credentials are never sent without TLS."""
        self.session(extensions=None, username="tracker", password="s3cret")
        self.server(ehlo_reply((b"AUTH PLAIN LOGIN",)))
        written = self.sent()
        self.assertNotIn(b"AUTH", written)
        self.conn.connectionLost(Failure(ConnectionDone()))
        [(code, text, stage)] = self.source.failed
        self.assertEqual((code, stage), (421, CONNECT))
        self.assertIn("unencrypted", text)
