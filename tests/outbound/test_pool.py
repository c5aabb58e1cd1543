"""
Tests for L{trackermail.outbound.pool}: the connection pool with scripted
connections, then the whole client against real loopback servers (a Twisted
sink, Postfix's smtp-sink when installed, and TLS with a test CA).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tests.outbound.test_connection import ehlo_reply
from tests.outbound.test_wire import body_with_dot_at, normalise
from tests.support.net import unused_port
from tests.support.outbound import MemoryOutboundTransport, SinkFactory
from tests.support.tlsca import TestCA
from trackermail.config import OutboundSection
from trackermail.errors import ConfigError
from trackermail.outbound.interface import (
    CONNECT,
    DATA,
    LOCAL,
    MAIL,
    RCPT,
    IOutboundTransport,
    Reply,
)
from trackermail.outbound.pool import SMTPPool, pool_from_config


class FakeEndpoint:
    """
    Records connection attempts; the test decides how each one ends.
    """

    def __init__(self):
        self.attempts: list[tuple[Factory, Deferred]] = []

    def connect(self, factory):
        d: Deferred = Deferred()
        self.attempts.append((factory, d))
        return d

    def accept(self, index=-1, extensions=(b"PIPELINING",)):
        factory, d = self.attempts[index]
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        d.callback(proto)
        proto.dataReceived(b"220 mx ESMTP\r\n")
        proto.dataReceived(ehlo_reply(extensions))
        return proto, transport

    def refuse(self, index=-1):
        self.attempts[index][1].errback(ConnectionRefusedError("refused"))


def take(transport: StringTransport) -> bytes:
    value = transport.value()
    transport.clear()
    return value


class PoolTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.endpoint = FakeEndpoint()

    def pool(self, **kw):
        kw.setdefault("helo", "tracker.example")
        return SMTPPool(self.clock, "mx.example", 25, endpoint=self.endpoint, **kw)

    def test_provides_interface(self):
        """The pool and the memory fake both provide IOutboundTransport."""
        verifyObject(IOutboundTransport, self.pool())
        verifyObject(IOutboundTransport, MemoryOutboundTransport())

    def test_connections_are_bounded(self):
        """More queued sends than connections open exactly `connections` connections."""
        pool = self.pool(connections=3)
        for i in range(10):
            pool.send(f"s{i}@t.example", ["a@x"], b"hi\n")
        self.assertEqual(len(self.endpoint.attempts), 3)
        self.assertEqual(pool.queued, 10)

    def test_one_send_one_connection(self):
        """A single send opens a single connection, which runs it."""
        pool = self.pool()
        d = pool.send("s@t.example", ["a@x"], b"hi\n")
        self.assertEqual(len(self.endpoint.attempts), 1)
        proto, transport = self.endpoint.accept()
        self.assertTrue(take(transport).endswith(b"MAIL FROM:<s@t.example>\r\nRCPT TO:<a@x>\r\nDATA\r\n"))
        proto.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued\r\n")
        self.assertEqual(self.successResultOf(d), {"a@x": Reply(250, "2.0.0 queued", DATA)})

    def test_idle_connection_is_reused(self):
        """A later send goes to the idle connection without opening another."""
        pool = self.pool()
        pool.send("s@t.example", ["a@x"], b"hi\n")
        proto, transport = self.endpoint.accept()
        proto.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n")
        take(transport)
        d = pool.send("s2@t.example", ["b@x"], b"hi\n")
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.assertEqual(take(transport), b"MAIL FROM:<s2@t.example>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
        proto.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n")
        self.assertEqual(self.successResultOf(d), {"b@x": Reply(250, "done", DATA)})

    def test_work_spread_over_connections(self):
        """Queued sends are taken by every connection that becomes ready."""
        pool = self.pool(connections=2)
        for i in range(4):
            pool.send(f"s{i}@t.example", ["a@x"], b"hi\n")
        _, t1 = self.endpoint.accept(0)
        _, t2 = self.endpoint.accept(1)
        self.assertIn(b"MAIL FROM:<s0@t.example>", take(t1))
        self.assertIn(b"MAIL FROM:<s1@t.example>", take(t2))
        self.assertEqual(pool.queued, 2)

    def test_connect_failure_fails_queue(self):
        """When the smarthost cannot be reached, every queued send gets 421 4.4.1 at once."""
        pool = self.pool(connections=2)
        d1 = pool.send("s@t.example", ["a@x"], b"hi\n")
        d2 = pool.send("s@t.example", ["b@x", "c@x"], b"hi\n")
        with capturedLogs() as events:
            self.endpoint.refuse(0)
            self.assertNoResult(d1)
            self.endpoint.refuse(1)
        for result in (self.successResultOf(d1), self.successResultOf(d2)):
            for code, text, stage in result.values():
                self.assertEqual((code, stage), (421, CONNECT))
                self.assertTrue(text.startswith("4.4.1 cannot connect to mx.example:25"))
        self.assertTrue(any(e["log_level"] == LogLevel.warn for e in events))
        self.assertEqual(pool.queued, 0)

    def test_backoff_after_failure(self):
        """After a failed connection, the next attempt waits (1 s, then 2 s ...) and sends wait for it."""
        pool = self.pool()
        pool.send("s@t.example", ["a@x"], b"hi\n")
        self.endpoint.refuse()
        d = pool.send("s@t.example", ["a@x"], b"hi\n")
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.endpoint.refuse()
        self.assertEqual(self.successResultOf(d)["a@x"][0], 421)
        pool.send("s@t.example", ["a@x"], b"hi\n")
        self.clock.advance(1)
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.clock.advance(1)
        self.assertEqual(len(self.endpoint.attempts), 3)
        self.endpoint.accept()
        self.assertEqual(self.clock.getDelayedCalls()[0].func.__name__, "_on_timeout")

    def test_failure_with_other_connection_working_keeps_queue(self):
        """A failed extra connection does not fail sends a working connection can still take."""
        pool = self.pool(connections=2)
        d1 = pool.send("s@t.example", ["a@x"], b"hi\n")
        d2 = pool.send("s@t.example", ["b@x"], b"hi\n")
        proto, transport = self.endpoint.accept(0)
        self.endpoint.refuse(1)
        self.assertNoResult(d2)
        proto.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n")
        proto.dataReceived(b"250 done\r\n250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n")
        self.assertEqual(self.successResultOf(d1), {"a@x": Reply(250, "done", DATA)})
        self.assertEqual(self.successResultOf(d2), {"b@x": Reply(250, "done", DATA)})

    def test_setup_failure_fails_queue(self):
        """A connection that cannot be set up (421 greeting) fails the queue with its reason."""
        pool = self.pool()
        d = pool.send("s@t.example", ["a@x"], b"hi\n")
        factory, attempt = self.endpoint.attempts[0]
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        attempt.callback(proto)
        proto.dataReceived(b"421 4.7.0 too many connections\r\n")
        proto.connectionLost(Failure(ConnectionDone()))
        code, text, stage = self.successResultOf(d)["a@x"]
        self.assertEqual((code, stage), (421, CONNECT))
        self.assertIn("too many connections", text)
        self.assertEqual(pool.open_connections, 0)

    def test_dropped_connection_requeues(self):
        """A send on a connection that drops before content is retried on a new connection."""
        pool = self.pool()
        d = pool.send("s@t.example", ["a@x"], b"hi\n")
        proto, _ = self.endpoint.accept()
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertNoResult(d)
        self.assertEqual(len(self.endpoint.attempts), 2)
        proto2, transport2 = self.endpoint.accept()
        self.assertIn(b"MAIL FROM:<s@t.example>", take(transport2))
        proto2.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n")
        self.assertEqual(self.successResultOf(d), {"a@x": Reply(250, "done", DATA)})

    def test_idle_timeout_closes_and_reopens(self):
        """An idle connection closes after idle_timeout; the next send opens a new one."""
        pool = self.pool(idle_timeout=60)
        pool.send("s@t.example", ["a@x"], b"hi\n")
        proto, transport = self.endpoint.accept()
        proto.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n")
        take(transport)
        self.clock.advance(60)
        self.assertEqual(take(transport), b"QUIT\r\n")
        proto.dataReceived(b"221 bye\r\n")
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(pool.open_connections, 0)
        pool.send("s@t.example", ["a@x"], b"hi\n")
        self.assertEqual(len(self.endpoint.attempts), 2)

    def test_max_transactions_reconnects(self):
        """A connection retired after max_transactions is replaced for the remaining queue."""
        pool = self.pool(connections=1, max_transactions=1)
        d1 = pool.send("s@t.example", ["a@x"], b"hi\n")
        d2 = pool.send("s@t.example", ["b@x"], b"hi\n")
        proto, transport = self.endpoint.accept()
        proto.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n")
        self.successResultOf(d1)
        self.assertTrue(take(transport).endswith(b"QUIT\r\n"))
        proto.dataReceived(b"221 bye\r\n")
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.endpoint.attempts), 2)
        proto2, _ = self.endpoint.accept()
        proto2.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n")
        self.successResultOf(d2)

    def test_close(self):
        """close() fails queued sends with 4xx, lets running ones finish, QUITs, then fires."""
        pool = self.pool(connections=1)
        running = pool.send("s@t.example", ["a@x"], b"hi\n")
        queued = pool.send("s@t.example", ["b@x"], b"hi\n")
        proto, transport = self.endpoint.accept()
        take(transport)
        closed = pool.close()
        self.assertEqual(self.successResultOf(queued)["b@x"][0], 421)
        self.assertNoResult(closed)
        proto.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n")
        self.assertEqual(self.successResultOf(running), {"a@x": Reply(250, "done", DATA)})
        self.assertTrue(take(transport).endswith(b"QUIT\r\n"))
        proto.dataReceived(b"221 bye\r\n")
        self.assertNoResult(closed)
        proto.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(closed)
        later = pool.send("s@t.example", ["c@x"], b"hi\n")
        self.assertEqual(self.successResultOf(later)["c@x"][0], 421)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_cancels_attempts(self):
        """close() while connecting cancels the attempt and fires."""
        pool = self.pool()
        pool.send("s@t.example", ["a@x"], b"hi\n")
        closed = pool.close()
        self.assertTrue(self.endpoint.attempts[0][1].called)
        self.successResultOf(closed)
        self.assertEqual(pool.open_connections, 0)

    def test_close_idle_pool(self):
        """close() on a pool without connections fires at once."""
        self.successResultOf(self.pool().close())

    def test_pool_from_config(self):
        """pool_from_config takes host, port and settings from [outbound]."""
        pool = pool_from_config(OutboundSection(smarthost="relay.example:2525", connections=3,
                                                helo="tracker.example", idle_timeout=5), self.clock)
        self.assertEqual((pool.host, pool.port, pool.connections), ("relay.example", 2525, 3))
        self.assertEqual(pool._settings.helo, "tracker.example")
        self.assertEqual(pool._settings.idle_timeout, 5)

    def test_bad_settings(self):
        """Bad starttls, connections, helo or ca_file values raise ConfigError naming the key."""
        for kw, key in [({"starttls": "yes"}, "starttls"), ({"connections": 0}, "connections"),
                        ({"helo": "a b"}, "helo"),
                        ({"starttls": "required", "ca_file": "/nonexistent"}, "ca_file")]:
            e = self.assertRaises(ConfigError, self.pool, **kw)
            self.assertIn(f"[outbound] {key}", str(e))
        empty = self.mktemp()
        open(empty, "w").close()
        e = self.assertRaises(ConfigError, self.pool, starttls="required", ca_file=empty)
        self.assertIn("no PEM certificate", str(e))


# -- real loopback servers ---------------------------------------------------


class LoopbackMixin:
    async def listen(self, factory):
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        if isinstance(factory, SinkFactory):
            self.addCleanup(factory.wait_closed)
        return port.getHost().port

    def make_pool(self, port, host="127.0.0.1", **kw):
        kw.setdefault("helo", "tracker.example")
        kw.setdefault("timeout", 30)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30)
        pool = SMTPPool(reactor, host, port, endpoint=endpoint, **kw)
        self.addCleanup(pool.close)
        return pool


class TwistedSinkTests(LoopbackMixin, TestCase):
    async def test_many_transactions_one_connection(self):
        """Fifty messages with distinct senders go over one connection, byte for byte."""
        sink = SinkFactory()
        pool = self.make_pool(await self.listen(sink), connections=1)
        bodies = [b"Subject: %d\r\n\r\n.\r\nbody %d\r\n" % (i, i) for i in range(50)]
        results = await defer.gatherResults([
            pool.send(f"bounces+{i}@t.example", [f"r{i}@x.example"], body)
            for i, body in enumerate(bodies)])
        self.assertEqual([r[f"r{i}@x.example"][0] for i, r in enumerate(results)], [250] * 50)
        self.assertEqual(sink.connections, 1)
        self.assertEqual([m.data for m in sink.messages], bodies)
        self.assertEqual([m.mail_from for m in sink.messages],
                         [f"bounces+{i}@t.example" for i in range(50)])

    async def test_spread_over_connections(self):
        """A burst of sends uses at most `connections` sessions."""
        sink = SinkFactory()
        pool = self.make_pool(await self.listen(sink), connections=4)
        results = await defer.gatherResults([
            pool.send(f"s{i}@t.example", ["a@x.example"], b"x\n") for i in range(200)])
        self.assertEqual(len(results), 200)
        self.assertEqual(sink.count, 200)
        self.assertLessEqual(sink.connections, 4)

    async def test_lockstep_server(self):
        """A server without PIPELINING gets lock-step SMTP and every message."""
        sink = SinkFactory(pipelining=False)
        pool = self.make_pool(await self.listen(sink), connections=2)
        results = await defer.gatherResults([
            pool.send(f"s{i}@t.example", ["a@x.example", "b@x.example"], b"x\n")
            for i in range(20)])
        self.assertEqual({code for r in results for code, _, _ in r.values()}, {250})
        self.assertEqual(sink.count, 20)

    async def test_rejections_then_success(self):
        """Refused senders and recipients get their replies and the session goes on."""
        sink = SinkFactory()
        sink.replies["spammer@t.example"] = (550, "5.7.1 sender refused")
        sink.replies["gone@x.example"] = (550, "5.1.1 unknown user")
        port = await self.listen(sink)
        for pipelining in (True, False):
            sink.pipelining = pipelining
            pool = self.make_pool(port, connections=1)
            r1 = pool.send("spammer@t.example", ["a@x.example"], b"x\n")
            r2 = pool.send("s@t.example", ["gone@x.example"], b"x\n")
            r3 = pool.send("s@t.example", ["gone@x.example", "a@x.example"], b"x\n")
            r4 = pool.send("s@t.example", ["a@x.example"], b"x\n")
            r1, r2, r3, r4 = await defer.gatherResults([r1, r2, r3, r4])
            self.assertEqual(r1, {"a@x.example": Reply(550, "5.7.1 sender refused", MAIL)})
            self.assertEqual(r2, {"gone@x.example": Reply(550, "5.1.1 unknown user", RCPT)})
            self.assertEqual(r3["gone@x.example"][0], 550)
            self.assertEqual(r3["a@x.example"][0], 250)
            self.assertEqual(r4["a@x.example"][0], 250)
            await pool.close()

    async def test_dot_line_sweep(self):
        """A lone "." line at every offset around 16 KiB arrives intact."""
        sink = SinkFactory()
        pool = self.make_pool(await self.listen(sink), connections=2)
        offsets = range(16384 - 40, 16384 + 41)
        bodies = [body_with_dot_at(offset) for offset in offsets]
        await defer.gatherResults([
            pool.send("s@t.example", ["a@x.example"], body) for body in bodies])
        self.assertEqual(sorted(m.data for m in sink.messages), sorted(bodies))

    async def test_one_mebibyte_lf_body(self):
        """A 1 MiB LF-only body with dot lines arrives CRLF-normalised and unstuffed."""
        sink = SinkFactory()
        pool = self.make_pool(await self.listen(sink))
        body = b"\n".join(b"." if i % 500 == 0 else b".x %d" % i if i % 7 == 0 else b"line %d" % i
                          for i in range(90000))[:1024 * 1024]
        result = await pool.send("s@t.example", ["a@x.example"], body)
        self.assertEqual(result["a@x.example"][0], 250)
        self.assertEqual(sink.messages[0].data, normalise(body))

    async def test_size_limit(self):
        """Over the server's SIZE: 552 5.3.4 without sending; under it: SIZE= and delivery."""
        sink = SinkFactory(size=1000)
        pool = self.make_pool(await self.listen(sink))
        big = await pool.send("s@t.example", ["a@x.example"], b"x" * 2000)
        small = await pool.send("s@t.example", ["a@x.example"], b"\xe9" * 100)
        self.assertEqual(big["a@x.example"][::2], (552, LOCAL))
        self.assertEqual(small["a@x.example"][0], 250)
        self.assertEqual(sink.messages[0].mail_params, ["SIZE=102", "BODY=8BITMIME"])
        self.assertEqual(sink.count, 1)

    async def test_nobody_listening(self):
        """Sends to a port nobody listens on get 421 4.4.1."""
        pool = self.make_pool(unused_port())
        result = await pool.send("s@t.example", ["a@x.example"], b"x\n")
        self.assertEqual(result["a@x.example"][::2], (421, CONNECT))
        self.assertTrue(result["a@x.example"][1].startswith("4.4.1"))

    async def test_server_closes_idle_session(self):
        """A session the server closed while idle is replaced transparently for the next send."""
        sink = SinkFactory()
        pool = self.make_pool(await self.listen(sink), connections=1)
        await pool.send("s@t.example", ["a@x.example"], b"x\n")
        closed = Deferred()
        sink.protocols[0].connectionLost = lambda reason: closed.callback(None)
        sink.protocols[0].transport.write(b"421 4.4.2 idle timeout\r\n")
        sink.protocols[0].transport.loseConnection()
        await closed
        sink.open -= 1
        result = await pool.send("s@t.example", ["b@x.example"], b"x\n")
        self.assertEqual(result["b@x.example"][0], 250)
        self.assertEqual(sink.connections, 2)


class TLSTests(LoopbackMixin, TestCase):
    def setUp(self):
        self.ca = TestCA()
        self.ca_file = self.ca.write_ca(self.mktemp())
        self.server_cert = self.ca.issue(["localhost"], ["127.0.0.1"])

    async def test_verified_starttls(self):
        """With starttls = required and a matching certificate, mail goes over TLS with AUTH."""
        sink = SinkFactory(tls=self.server_cert.options(), auth=("tracker", "s3cret"))
        pool = self.make_pool(await self.listen(sink), host="localhost", starttls="required",
                              ca_file=self.ca_file, username="tracker", password="s3cret")
        result = await pool.send("s@t.example", ["a@x.example"], b"Subject: tls\n\nhi\n")
        self.assertEqual(result["a@x.example"][0], 250)
        self.assertTrue(sink.messages[0].tls)
        self.assertIn(b"STARTTLS", sink.commands)

    async def test_ip_address_certificate(self):
        """A smarthost given by IP address is verified against the certificate's IP entry."""
        sink = SinkFactory(tls=self.server_cert.options())
        pool = self.make_pool(await self.listen(sink), host="127.0.0.1", starttls="required",
                              ca_file=self.ca_file)
        result = await pool.send("s@t.example", ["a@x.example"], b"hi\n")
        self.assertEqual(result["a@x.example"][0], 250)

    async def test_wrong_hostname(self):
        """A certificate for another name: 421 4.7.0 for every recipient, logged, nothing sent."""
        sink = SinkFactory(tls=self.server_cert.options())
        pool = self.make_pool(await self.listen(sink), host="wrong.example", starttls="required",
                              ca_file=self.ca_file)
        with capturedLogs() as events:
            result = await pool.send("s@t.example", ["a@x.example", "b@x.example"], b"hi\n")
        for code, text, stage in result.values():
            self.assertEqual((code, stage), (421, CONNECT))
            self.assertTrue(text.startswith("4.7.0 TLS with wrong.example:"), text)
        self.assertTrue(any(e["log_level"] == LogLevel.error for e in events))
        self.assertEqual(sink.count, 0)
        self.assertNotIn(b"MAIL", b" ".join(sink.commands))

    async def test_untrusted_ca(self):
        """A certificate from a CA we do not trust is a 4xx failure."""
        other = TestCA("another CA").write_ca(self.mktemp())
        sink = SinkFactory(tls=self.server_cert.options())
        pool = self.make_pool(await self.listen(sink), host="localhost", starttls="required",
                              ca_file=other)
        result = await pool.send("s@t.example", ["a@x.example"], b"hi\n")
        self.assertEqual(result["a@x.example"][0], 421)
        self.assertEqual(sink.count, 0)

    async def test_required_without_starttls(self):
        """starttls = required against a server without STARTTLS sends nothing in clear."""
        sink = SinkFactory()
        pool = self.make_pool(await self.listen(sink), host="localhost", starttls="required",
                              ca_file=self.ca_file)
        result = await pool.send("s@t.example", ["a@x.example"], b"hi\n")
        self.assertEqual(result["a@x.example"][0], 421)
        self.assertIn("refusing to send in clear", result["a@x.example"][1])
        self.assertEqual(sink.count, 0)


async def wait_for_port(port: int, tries: int = 200) -> None:
    """
    Poll until something accepts connections on 127.0.0.1:PORT.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    for _ in range(tries):
        try:
            proto = await endpoint.connect(Factory.forProtocol(Protocol))
        except ConnectionRefusedError:
            await deferLater(reactor, 0.05, lambda: None)
            continue
        proto.transport.abortConnection()
        return
    raise AssertionError(f"nothing listens on port {port}")


class PostfixSmtpSinkTests(LoopbackMixin, TestCase):
    if shutil.which("smtp-sink") is None:
        skip = "Postfix smtp-sink is not installed (apt-get install postfix)"

    async def test_smtp_sink(self):
        """Postfix's smtp-sink takes 300 pipelined messages over the pool, dot lines intact."""
        # smtp-sink drops privileges to nobody, who cannot enter trial's
        # temp directory.
        dump = tempfile.mkdtemp(prefix="trackermail-smtp-sink-")
        self.addCleanup(shutil.rmtree, dump, True)
        os.chmod(dump, 0o777)
        port = unused_port()
        args = ["smtp-sink"]
        if os.getuid() == 0:
            args += ["-u", "nobody"]
        args += ["-d", dump + "/%H%M%S.", f"127.0.0.1:{port}", "64"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.terminate)
        await wait_for_port(port)
        pool = self.make_pool(port, connections=4)
        special = b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\nend\r\n"
        sends = [pool.send(f"bounces+{i}@t.example", ["a@x.example"], b"Subject: %d\n\nhi\n" % i)
                 for i in range(299)]
        sends.append(pool.send("dots@t.example", ["a@x.example", "b@x.example"], special))
        results = await defer.gatherResults(sends)
        self.assertEqual({code for r in results for code, _, _ in r.values()}, {250})
        await pool.close()
        dumped = []
        for name in glob.glob(dump + "/*"):
            with open(name, "rb") as f:
                dumped.append(f.read())
        [dots] = [d for d in dumped if b"<dots@t.example>" in d]
        # smtp-sink's own header block ends with a three-line Received:.
        lines = dots.split(b"\n")
        start = next(i for i, line in enumerate(lines) if line.startswith(b"Received: ")) + 3
        body = b"\n".join(lines[start:])
        self.assertEqual(body, special.replace(b"\r\n", b"\n") + b"\n")
