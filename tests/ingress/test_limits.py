"""
Limits of the SMTP and LMTP servers: connections in total and per client,
idle time under stress, recipients, the time of a transaction, the rate of
its data, and the memory a big message may take while it streams in.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.ingress import FQDN, FakeSpool, connect, replies
from trackermail.ingress.server import IngressFactory, IngressSettings
from trackermail.ingress.smtp import SMTPIngress

F = FQDN.encode()
RCPT = b"RCPT TO:<control@" + F + b">\r\n"


def factory(**limits) -> IngressFactory:
    from twisted.internet import task

    settings = IngressSettings(fqdn=FQDN, accept_unqualified=False, max_message_size=10**8,
                               spool=FakeSpool(), reactor=task.Clock(), **limits)
    f = IngressFactory(settings)
    f.protocol = SMTPIngress
    return f


def open_from(f: IngressFactory, host: str):
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000),
                                hostAddress=IPv4Address("TCP", "127.0.0.1", 25))
    proto, t, _, _ = connect(factory=f, transport=transport)
    return proto, t


class ConnectionLimitTests(SynchronousTestCase):
    def test_total(self):
        """Beyond max_connections a client gets 421 at once; a free slot takes the next."""
        f = factory(max_connections=2, max_connections_per_ip=0)
        first, _ = open_from(f, "192.0.2.1")
        open_from(f, "192.0.2.2")
        _, t = open_from(f, "192.0.2.3")
        self.assertEqual(replies(t), [b"421 4.7.0 " + F + b" Error: too many connections;"
                                      b" try again later"])
        self.assertTrue(t.disconnecting)
        first.connectionLost(None)
        _, t = open_from(f, "192.0.2.3")
        self.assertEqual(replies(t), [b"220 " + F + b" ESMTP trackermail"])
        self.assertEqual(f.connections, 2)

    def test_per_client(self):
        """One address gets at most max_connections_per_ip; others still get in."""
        f = factory(max_connections=100, max_connections_per_ip=2)
        open_from(f, "192.0.2.1")
        open_from(f, "192.0.2.1")
        _, t = open_from(f, "192.0.2.1")
        self.assertTrue(replies(t)[0].startswith(b"421 4.7.0 " + F
                                                 + b" Error: too many connections from your"))
        _, t = open_from(f, "192.0.2.9")
        self.assertTrue(replies(t)[0].startswith(b"220 "))

    def test_refused_are_not_counted(self):
        """A refused connection frees nothing when it goes (it was never counted)."""
        f = factory(max_connections=1, max_connections_per_ip=0)
        open_from(f, "192.0.2.1")
        proto, _ = open_from(f, "192.0.2.2")
        proto.connectionLost(None)
        self.assertEqual((f.connections, f.per_client), (1, {"192.0.2.1": 1}))

    def test_idle_clients_make_room_under_stress(self):
        """When 80% of the slots are taken, idle clients time out after 10 s, not 300 s."""
        f = factory(max_connections=10, max_connections_per_ip=0, timeout=300)
        clock = f.settings.reactor
        idle = [open_from(f, f"192.0.2.{i}")[1] for i in range(8)]
        clock.advance(11)
        for t in idle:
            self.assertEqual(replies(t)[-1], b"421 4.4.2 " + F + b" Error: timeout exceeded")
            self.assertTrue(t.disconnecting)

    def test_no_stress_normal_timeout(self):
        """Below the stress mark an idle client keeps its 300 s."""
        f = factory(max_connections=10, max_connections_per_ip=0, timeout=300)
        clock = f.settings.reactor
        _, t = open_from(f, "192.0.2.1")
        clock.advance(299)
        self.assertFalse(t.disconnecting)
        clock.advance(2)
        self.assertTrue(t.disconnecting)


class TransactionLimitTests(SynchronousTestCase):
    def test_recipients(self):
        """Recipients beyond max_recipients get 452 4.5.3."""
        proto, t, _, _ = connect(max_recipients=2)
        replies(t)
        proto.dataReceived(b"MAIL FROM:<a@b.c>\r\n" + RCPT * 3)
        self.assertEqual(replies(t)[-3:], [b"250 2.1.5 Ok", b"250 2.1.5 Ok",
                                           b"452 4.5.3 Error: too many recipients"])

    def test_transaction_time(self):
        """A transaction still open after transaction_time is closed with 421; nothing is kept."""
        proto, t, spool, clock = connect(transaction_time=600, min_data_rate=0)
        replies(t)
        proto.dataReceived(b"MAIL FROM:<a@b.c>\r\n" + RCPT + b"DATA\r\nSubject: x\r\n\r\n")
        for _ in range(7):
            clock.advance(90)
            proto.dataReceived(b"more\r\n")
        self.assertEqual(replies(t)[-1], b"421 4.4.2 " + F + b" Error: transaction took too long")
        self.assertTrue(t.disconnecting)
        self.assertEqual(spool.calls, [])
        self.assertEqual(len(spool.aborted), 1)

    def test_slow_data(self):
        """One byte every 100 s: the data rate check closes the connection with 421."""
        proto, t, spool, clock = connect(min_data_rate=1024)
        replies(t)
        proto.dataReceived(b"MAIL FROM:<a@b.c>\r\n" + RCPT + b"DATA\r\n")
        replies(t)
        for _ in range(5):
            proto.dataReceived(b"x")
            clock.advance(10)
        self.assertEqual(replies(t), [b"421 4.4.2 " + F + b" Error: data too slow"])
        self.assertTrue(t.disconnecting)
        self.assertEqual(spool.calls, [])

    def test_fast_data_is_fine(self):
        """A client sending steadily above the minimum rate is not disturbed."""
        proto, t, spool, clock = connect(min_data_rate=1024, max_size=10**8)
        replies(t)
        proto.dataReceived(b"MAIL FROM:<a@b.c>\r\n" + RCPT + b"DATA\r\nSubject: x\r\n\r\n")
        for _ in range(12):
            proto.dataReceived(b"y" * 20_000 + b"\r\n")
            clock.advance(10)
        proto.dataReceived(b".\r\n")
        self.assertFalse(t.disconnecting)
        self.assertEqual(len(spool.calls), 1)


class StreamingTests(SynchronousTestCase):
    def test_data_goes_to_the_writer_as_it_comes(self):
        """Message data reaches the spool writer before the final dot."""
        proto, t, spool, _ = connect(max_size=10**8)
        replies(t)
        proto.dataReceived(b"MAIL FROM:<a@b.c>\r\n" + RCPT + b"DATA\r\nSubject: x\r\n\r\n")
        proto.dataReceived(b"z" * 100_000 + b"\r\n")
        [writer] = spool.opened
        self.assertGreater(sum(len(c) for c in writer.chunks), 100_000)
        self.assertEqual(spool.calls, [])

    def test_slow_disk_pauses_the_client(self):
        """While the writer holds more than 1 MiB, the client is paused; then resumed."""
        proto, t, spool, _ = connect(max_size=10**8)
        drained = defer.Deferred()
        spool.when_drained = lambda writer: drained
        replies(t)
        proto.dataReceived(b"MAIL FROM:<a@b.c>\r\n" + RCPT + b"DATA\r\nSubject: x\r\n\r\n")
        [writer] = spool.opened
        writer.pending = 2 * 1024 * 1024
        proto.dataReceived(b"z" * 1000 + b"\r\n")
        self.assertEqual(t.producerState, "paused")
        proto.dataReceived(b"held\r\n.\r\nNOOP\r\n")
        self.assertEqual(spool.calls, [])
        writer.pending = 0
        drained.callback(None)
        self.assertEqual(t.producerState, "paused")  # now waiting for the commit
        spool.fire_all()
        self.assertEqual(t.producerState, "producing")
        self.assertTrue(spool.calls[0].data.endswith(b"\nheld\n"))
        self.assertEqual(replies(t)[-1], b"250 2.0.0 Ok")

    def test_too_big_aborts_the_writer(self):
        """A message over the limit is aborted at once, not written to the end."""
        proto, t, spool, _ = connect(max_size=1000)
        replies(t)
        proto.dataReceived(b"MAIL FROM:<a@b.c>\r\n" + RCPT + b"DATA\r\n" + b"x" * 2000 + b"\r\n")
        self.assertEqual(len(spool.aborted), 1)
        proto.dataReceived(b"y" * 5000 + b"\r\n.\r\n")
        self.assertEqual(replies(t)[-1], b"552 5.3.4 Error: message file too big")
        self.assertEqual(spool.calls, [])


class RefusalLogTests(SynchronousTestCase):
    def test_refused_recipient_logged(self):
        """A refused recipient is logged with the address, the sender, the client and why."""
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        proto, t, _, _ = connect()
        replies(t)
        proto.dataReceived(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<x@example.com>\r\n")
        [event] = [e for e in events if e.get("what", "").startswith("RCPT")]
        self.assertEqual((event["recipient"], event["sender"], event["client"], event["code"],
                          event["service"]), ("x@example.com", "a@b.c", "192.0.2.7", 550, "esmtp"))
        self.assertIn("Relay access denied", event["reason"])
