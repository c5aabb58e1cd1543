"""
The L{IOutboundTransport} contract, run against the in-memory transport the
sender's tests use and against the real L{SMTPPool} talking to a loopback
SMTP sink: what the sender relies on holds for both.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tests.outbound.test_wire import normalise
from tests.support.net import listen_local
from tests.support.outbound import MemoryOutboundTransport, SinkFactory
from trackermail.outbound.interface import (
    CONNECT,
    DATA,
    LOCAL,
    MAIL,
    RCPT,
    STAGES,
    IOutboundTransport,
    Reply,
)
from trackermail.outbound.pool import SMTPPool

MESSAGE = b"Subject: hello\r\nMessage-ID: <c1@t.example>\r\n\r\n.dot line\r\nbody\r\n"


class TransportContractMixin:
    """
    Tests every L{IOutboundTransport} must pass. Subclasses make the
    transport and script refusals the way their server would give them.
    """

    async def make_transport(self):
        raise NotImplementedError

    def refuse_recipient(self, address: str, code: int, text: str) -> None:
        raise NotImplementedError

    def refuse_sender(self, address: str, code: int, text: str) -> None:
        raise NotImplementedError

    def refuse_content(self, code: int, text: str) -> None:
        raise NotImplementedError

    def received(self) -> list[tuple[str, list[str], bytes]]:
        """(sender, recipients, CRLF content) of what reached the server."""
        raise NotImplementedError

    async def test_provides_interface(self):
        """The transport provides IOutboundTransport."""
        transport = await self.make_transport()
        self.assertTrue(verifyObject(IOutboundTransport, transport))

    async def test_accepted_message(self):
        """Accepted recipients get a 2xx Reply from the end of DATA; the server gets the message."""
        transport = await self.make_transport()
        result = await transport.send("bounces+1@t.example", ["a@x.example", "b@y.example"],
                                      MESSAGE)
        self.assertEqual(sorted(result), ["a@x.example", "b@y.example"])
        for reply in result.values():
            self.assertIsInstance(reply, Reply)
            self.assertEqual((reply.code // 100, reply.stage), (2, DATA))
        self.assertEqual(self.received(), [("bounces+1@t.example",
                                            ["a@x.example", "b@y.example"], MESSAGE)])

    async def test_parts_arrive_as_one_message(self):
        """A header prefix and body chunks arrive as the one message they make up."""
        transport = await self.make_transport()
        body = [b"Subject: x\n\n", b"line 1\n.line 2\n", b"..line 3\n"]
        result = await transport.send("s@t.example", ["a@x.example"], [b"X-Copy: 1\n"] + body)
        self.assertEqual(result["a@x.example"].code, 250)
        self.assertEqual(self.received()[0][2], normalise(b"X-Copy: 1\n" + b"".join(body)))

    async def test_refused_recipient_keeps_its_reply(self):
        """A recipient refused at RCPT keeps that reply, with stage rcpt; the others are sent."""
        self.refuse_recipient("gone@x.example", 550, "5.1.1 <gone@x.example>: unknown user")
        transport = await self.make_transport()
        result = await transport.send("s@t.example", ["gone@x.example", "a@x.example"], MESSAGE)
        self.assertEqual(result["gone@x.example"],
                         Reply(550, "5.1.1 <gone@x.example>: unknown user", RCPT))
        self.assertEqual((result["a@x.example"].code, result["a@x.example"].stage), (250, DATA))
        self.assertEqual([r[1] for r in self.received()], [["a@x.example"]])

    async def test_refused_sender(self):
        """A refused MAIL FROM is every recipient's reply, with stage mail; nothing is sent."""
        self.refuse_sender("bounces+1@t.example", 553, "5.7.1 sender not allowed")
        transport = await self.make_transport()
        result = await transport.send("bounces+1@t.example", ["a@x.example", "b@y.example"],
                                      MESSAGE)
        self.assertEqual(result, {r: Reply(553, "5.7.1 sender not allowed", MAIL)
                                  for r in ("a@x.example", "b@y.example")})
        self.assertEqual(self.received(), [])

    async def test_refused_content(self):
        """A refusal at the end of DATA is the reply of every accepted recipient, with stage data."""
        self.refuse_content(554, "5.7.1 content rejected")
        self.refuse_recipient("gone@x.example", 550, "5.1.1 unknown")
        transport = await self.make_transport()
        result = await transport.send("s@t.example", ["a@x.example", "gone@x.example"], MESSAGE)
        self.assertEqual(result, {"a@x.example": Reply(554, "5.7.1 content rejected", DATA),
                                  "gone@x.example": Reply(550, "5.1.1 unknown", RCPT)})

    async def test_duplicate_recipients(self):
        """A recipient listed twice gets one result and one copy."""
        transport = await self.make_transport()
        result = await transport.send("", ["a@x.example", "a@x.example"], MESSAGE)
        self.assertEqual(list(result), ["a@x.example"])
        self.assertEqual([r[1] for r in self.received()], [["a@x.example"]])

    async def test_every_reply_names_a_known_stage(self):
        """Every Reply's stage is one of the documented stages."""
        self.refuse_recipient("gone@x.example", 550, "5.1.1 unknown")
        transport = await self.make_transport()
        result = await transport.send("s@t.example", ["a@x.example", "gone@x.example"], MESSAGE)
        self.assertLessEqual({r.stage for r in result.values()}, set(STAGES))

    async def test_send_after_close(self):
        """After close, a send gets a 4xx with stage local, and nothing is sent."""
        transport = await self.make_transport()
        await transport.close()
        result = await transport.send("s@t.example", ["a@x.example"], MESSAGE)
        self.assertEqual((result["a@x.example"].code // 100, result["a@x.example"].stage),
                         (4, LOCAL))
        self.assertEqual(self.received(), [])


class MemoryTransportContractTests(TransportContractMixin, TestCase):
    def setUp(self):
        self.transport = MemoryOutboundTransport()

    async def make_transport(self):
        return self.transport

    def refuse_recipient(self, address, code, text):
        self.transport.script(address, (code, text))

    def refuse_sender(self, address, code, text):
        self.transport.refuse_sender(address, (code, text))

    def refuse_content(self, code, text):
        self.transport.data_reply = Reply(code, text, DATA)

    def received(self):
        return [(m.mail_from, [r for r in m.recipients if m.results[r].code < 300],
                 normalise(m.data))
                for m in self.transport.sent
                if any(m.results[r].code < 300 for r in m.recipients)]


class MemoryTransportScriptTests(SynchronousTestCase):
    def test_scripted_results(self):
        """The fake records sends and answers 250 unless scripted otherwise."""
        t = MemoryOutboundTransport()
        t.script("b@x", (550, "5.1.1 no"))
        t.script_all((421, "4.4.2 down"))
        first = self.successResultOf(t.send("s", ["a@x"], b"m"))
        second = self.successResultOf(t.send("s", ["a@x", "b@x"], b"m"))
        self.assertEqual(first, {"a@x": Reply(421, "4.4.2 down", CONNECT)})
        self.assertEqual(second["b@x"], Reply(550, "5.1.1 no", RCPT))
        self.assertEqual(second["a@x"][::2], (250, DATA))
        self.assertEqual(t.delivered, [("s", "a@x")])

    def test_parts_are_kept(self):
        """The fake keeps the parts it was handed as well as the whole message."""
        t = MemoryOutboundTransport()
        t.send("s", ["a@x"], (b"X: 1\n", b"body\n"))
        self.assertEqual((t.sent[0].parts, t.sent[0].data), ((b"X: 1\n", b"body\n"),
                                                              b"X: 1\nbody\n"))

    def test_hold(self):
        """With hold=True sends stay pending until release()."""
        t = MemoryOutboundTransport(hold=True)
        d = t.send("s", ["a@x"], b"m")
        self.assertNoResult(d)
        self.assertEqual(t.release(), 1)
        self.successResultOf(d)


class SMTPPoolContractTests(TransportContractMixin, TestCase):
    def setUp(self):
        self.sink = SinkFactory()

    async def make_transport(self):
        port = listen_local(self, self.sink)
        pool = SMTPPool(reactor, "127.0.0.1", port, connections=2, helo="tracker.example.org")

        async def close():
            await pool.close()
            await self.sink.wait_closed()

        self.addCleanup(close)
        return pool

    def refuse_recipient(self, address, code, text):
        self.sink.replies[address] = (code, text)

    def refuse_sender(self, address, code, text):
        self.sink.replies[address] = (code, text)

    def refuse_content(self, code, text):
        self.sink.data_reply = (code, text)

    def received(self):
        return [(m.mail_from, m.recipients, m.data) for m in self.sink.messages
                if self.sink.data_reply[0] < 300]
