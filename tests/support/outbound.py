"""
An in-memory L{IOutboundTransport} for tests of code that sends mail.

    transport = MemoryOutboundTransport()
    transport.script("bob@example.org", (550, "5.1.1 no such user"))   # at RCPT
    transport.script_all((421, "4.4.2 smarthost down"), times=1)     # session setup
    transport.refuse_sender("bounces+x@t.example", (553, "5.7.1 no"))  # at MAIL
    transport.data_reply = Reply(554, "5.7.1 content rejected", DATA)
    ...
    transport.sent  # [SentMessage(mail_from, recipients, data, results, parts), ...]

By default every recipient gets 250 at the end of DATA. With C{hold=True}
sends stay pending until L{MemoryOutboundTransport.release} is called (to
test what happens while a send is in flight). It passes the same contract
tests as the real pool (C{tests.outbound.test_contract}).
"""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass, field
from typing import Optional, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from trackermail.outbound.interface import (
    CONNECT,
    DATA,
    LOCAL,
    MAIL,
    RCPT,
    IOutboundTransport,
    Reply,
)

OK = Reply(250, "2.0.0 Ok: queued", DATA)


def as_reply(result, stage: str) -> Reply:
    """A L{Reply}, or a (code, text) pair taken as a reply at C{stage}."""
    if isinstance(result, Reply):
        return result
    code, text = result
    return Reply(code, text, stage)


@dataclass
class SentMessage:
    mail_from: str
    recipients: list[str]
    data: bytes
    results: dict[str, Reply] = field(default_factory=dict)
    parts: tuple = ()


@implementer(IOutboundTransport)
class MemoryOutboundTransport:
    """
    Records every send and answers from a script.
    """

    def __init__(self, hold: bool = False):
        self.sent: list[SentMessage] = []
        self.closed = False
        self.hold = hold
        self.data_reply: Reply = OK
        self._per_recipient: dict[str, deque] = {}
        self._senders: dict[str, Reply] = {}
        self._all: deque = deque()
        self._pending: list[tuple[Deferred, dict]] = []

    def script(self, recipient: str, *results) -> None:
        """
        The next sends to C{recipient} get these results, one per send, in
        order; after that it gets the default again. A (code, text) pair is
        the reply to RCPT TO (or, for a 2xx, the end-of-data reply).
        """
        self._per_recipient.setdefault(recipient.lower(), deque()).extend(
            as_reply(r, DATA if 200 <= r[0] < 300 else RCPT) for r in results)

    def script_all(self, result, times: int = 1, stage: str = CONNECT) -> None:
        """
        The next C{times} sends give C{result} to every recipient (by
        default like a session that could not be set up).
        """
        self._all.extend([as_reply(result, stage)] * times)

    def refuse_sender(self, mail_from: str, result) -> None:
        """Every send from C{mail_from} gets C{result} at MAIL FROM."""
        self._senders[mail_from.lower()] = as_reply(result, MAIL)

    def _result_for(self, recipient: str) -> Reply:
        queue = self._per_recipient.get(recipient.lower())
        if queue:
            return queue.popleft()
        return self.data_reply

    def send(self, mail_from: str, recipients: Sequence[str], data) -> Deferred:
        recipients = list(dict.fromkeys(recipients))
        whole = self._all.popleft() if self._all else None
        if self.closed:
            whole = Reply(421, "4.3.2 transport closed", LOCAL)
        if whole is None:
            whole = self._senders.get(mail_from.lower())
        if whole is not None:
            results = {r: whole for r in recipients}
        else:
            results = {}
            for r in recipients:
                result = self._result_for(r)
                if result.stage == DATA and result.code < 300:
                    result = self.data_reply if self.data_reply.code >= 300 else result
                results[r] = result
        if isinstance(data, (bytes, bytearray)):
            parts = (bytes(data),)
        else:
            parts = tuple(bytes(p) for p in data)  # header prefix, then body chunks
        self.sent.append(SentMessage(mail_from, recipients, b"".join(parts), results, parts))
        if self.hold:
            d: Deferred = Deferred()
            self._pending.append((d, results))
            return d
        return succeed(results)

    def release(self) -> int:
        """
        Fire every held send; return how many there were.
        """
        pending, self._pending = self._pending, []
        for d, results in pending:
            d.callback(results)
        return len(pending)

    def close(self) -> Deferred:
        self.closed = True
        self.release()
        return succeed(None)

    @property
    def delivered(self) -> list[tuple[str, str]]:
        """
        (envelope sender, recipient) of every copy that got a 2xx.
        """
        return [
            (m.mail_from, r)
            for m in self.sent
            for r, (code, _, _) in m.results.items()
            if 200 <= code < 300
        ]


# -- a small SMTP sink server ------------------------------------------------


@dataclass
class ReceivedMessage:
    mail_from: str
    recipients: list[str]
    data: bytes  # dot-unstuffed, CRLF line endings, without the final "."
    mail_params: list[str]
    tls: bool
    connection: int


class SinkFactory(Factory):
    """
    Settings and records of L{SinkServer} connections: a synchronous SMTP
    sink that handles pipelined input, for loopback tests and the bench.

    @ivar replies: address -> (code, text) for MAIL FROM / RCPT TO.
    @ivar mail_reply: (code, text) for any other MAIL FROM (None: accept).
    @ivar data_reply: the end-of-data reply.
    """

    def __init__(self, pipelining: bool = True, size: int = 0,
                 eightbit: bool = True, tls=None, keep: bool = True,
                 auth: Optional[tuple[str, str]] = None):
        self.pipelining = pipelining
        self.size = size
        self.eightbit = eightbit
        self.tls = tls  # server-side TLS options: offers STARTTLS when set
        self.keep = keep
        self.auth = auth
        self.replies: dict[str, tuple[int, str]] = {}
        # The reply to every MAIL FROM not in replies (None: accept).
        self.mail_reply: Optional[tuple[int, str]] = None
        self.data_reply = (250, "2.0.0 Ok: queued")
        self.messages: list[ReceivedMessage] = []
        self.count = 0
        self.connections = 0
        self.commands: list[bytes] = []
        self.protocols: list = []
        self.open = 0
        self._closed_waiters: list[Deferred] = []

    def wait_closed(self) -> Deferred:
        """
        Fires once no session is open (for test cleanups).
        """
        if not self.open:
            return succeed(None)
        d: Deferred = Deferred()
        self._closed_waiters.append(d)
        return d

    def buildProtocol(self, addr):
        self.connections += 1
        p = SinkServer(self, self.connections)
        self.protocols.append(p)
        return p


class SinkServer(Protocol):
    """
    One sink session.
    """

    def __init__(self, factory: SinkFactory, number: int):
        self.factory = factory
        self.number = number
        self.buffer = b""
        self.in_data = False
        self.lines: list[bytes] = []
        self.tls = False
        self.authenticated = False
        self.reset()

    def reset(self) -> None:
        self.mail_from: Optional[str] = None
        self.mail_params: list[str] = []
        self.rcpts: list[str] = []

    def connectionMade(self) -> None:
        self.factory.open += 1
        self.transport.write(b"220 sink ESMTP\r\n")

    def connectionLost(self, reason=None) -> None:
        f = self.factory
        f.open -= 1
        if not f.open:
            waiters, f._closed_waiters = f._closed_waiters, []
            for d in waiters:
                d.callback(None)

    def dataReceived(self, data: bytes) -> None:
        buf = self.buffer + data
        lines = buf.split(b"\r\n")
        self.buffer = lines.pop()
        out = []
        for i, line in enumerate(lines):
            if self.in_data:
                if line == b".":
                    self.in_data = False
                    out.append(self.end_of_data())
                else:
                    if line[:1] == b".":
                        line = line[1:]
                    if self.factory.keep:
                        self.lines.append(line)
                continue
            reply = self.command(line)
            if reply is None:
                continue
            out.append(reply)
            if reply.startswith(b"220 ready"):
                # STARTTLS: what followed in this read was sent in clear.
                self.transport.write(b"".join(out))
                self.transport.startTLS(self.factory.tls)
                self.tls = True
                self.buffer = b""
                self.reset()
                return
            if reply.startswith(b"221"):
                self.transport.write(b"".join(out))
                self.transport.loseConnection()
                return
        if out:
            self.transport.write(b"".join(out))

    def command(self, line: bytes) -> Optional[bytes]:
        f = self.factory
        if f.keep:
            f.commands.append(line)
        verb = line[:4].upper()
        if verb == b"EHLO":
            ext = [b"sink"]
            if f.pipelining:
                ext.append(b"PIPELINING")
            if f.size:
                ext.append(b"SIZE %d" % f.size)
            if f.eightbit:
                ext.append(b"8BITMIME")
            if f.tls is not None and not self.tls:
                ext.append(b"STARTTLS")
            if f.auth is not None:
                ext.append(b"AUTH LOGIN PLAIN")
            ext.append(b"ENHANCEDSTATUSCODES")
            return b"".join(b"250-" + e + b"\r\n" for e in ext[:-1]) + b"250 " + ext[-1] + b"\r\n"
        if verb == b"HELO":
            return b"250 sink\r\n"
        if verb == b"STAR" and f.tls is not None and not self.tls:
            return b"220 ready to start TLS\r\n"
        if verb == b"AUTH" and f.auth is not None:
            parts = line.split()
            if len(parts) == 3 and parts[1].upper() == b"PLAIN":
                _, user, password = base64.b64decode(parts[2]).split(b"\0")
                if (user.decode(), password.decode()) == f.auth:
                    self.authenticated = True
                    return b"235 2.7.0 ok\r\n"
            return b"535 5.7.8 bad credentials\r\n"
        if verb == b"MAIL":
            if self.mail_from is not None:
                return b"503 5.5.1 nested MAIL command\r\n"
            addr, params = _parse_path(line[10:])
            code, text = f.replies.get(addr, f.mail_reply or (250, "2.1.0 Ok"))
            if code == 250:
                self.mail_from = addr
                self.mail_params = params
            return b"%d %s\r\n" % (code, text.encode())
        if verb == b"RCPT":
            if self.mail_from is None:
                return b"503 5.5.1 need MAIL command\r\n"
            addr, _ = _parse_path(line[8:])
            code, text = f.replies.get(addr, (250, "2.1.5 Ok"))
            if code == 250:
                self.rcpts.append(addr)
            return b"%d %s\r\n" % (code, text.encode())
        if verb == b"DATA":
            if not self.rcpts:
                return b"554 5.5.1 no valid recipients\r\n"
            self.in_data = True
            self.lines = []
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"RSET":
            self.reset()
            return b"250 2.0.0 Ok\r\n"
        if verb == b"NOOP":
            return b"250 2.0.0 Ok\r\n"
        if verb == b"QUIT":
            return b"221 2.0.0 Bye\r\n"
        return b"502 5.5.2 command not recognised\r\n"

    def end_of_data(self) -> bytes:
        f = self.factory
        f.count += 1
        if f.keep:
            body = b"".join(line + b"\r\n" for line in self.lines)
            f.messages.append(ReceivedMessage(self.mail_from, self.rcpts, body,
                                              self.mail_params, self.tls, self.number))
        self.lines = []
        self.reset()
        code, text = f.data_reply
        return b"%d %s\r\n" % (code, text.encode())


class SlowSinkFactory(SinkFactory):
    """
    A sink that takes C{delay} seconds to accept each message, like a busy
    smarthost: the end-of-data reply (and everything after it) waits.
    """

    def __init__(self, delay: float, clock=None, **kwargs):
        super().__init__(**kwargs)
        if clock is None:
            from twisted.internet import reactor as clock
        self.delay = delay
        self.clock = clock

    def buildProtocol(self, addr):
        self.connections += 1
        p = SlowSinkServer(self, self.connections)
        self.protocols.append(p)
        return p


class SlowSinkServer(SinkServer):
    def __init__(self, factory, number):
        super().__init__(factory, number)
        self.backlog = b""
        self.paused = False

    def dataReceived(self, data: bytes) -> None:
        self.backlog += data
        self._process()

    def _process(self) -> None:
        while not self.paused and self.transport is not None:
            end = self.backlog.find(b"\r\n")
            if end < 0:
                return
            line, self.backlog = self.backlog[:end + 2], self.backlog[end + 2:]
            if self.in_data and line == b".\r\n":
                self.paused = True
                self.factory.clock.callLater(self.factory.delay, self._accept)
                return
            SinkServer.dataReceived(self, line)

    def _accept(self) -> None:
        self.paused = False
        if self.transport is None or not self.transport.connected:
            return
        SinkServer.dataReceived(self, b".\r\n")
        self._process()


def _parse_path(rest: bytes) -> tuple[str, list[str]]:
    rest = rest.strip()
    end = rest.find(b">")
    addr = rest[1:end] if rest[:1] == b"<" and end >= 0 else rest
    params = rest[end + 1:].split() if end >= 0 else []
    return addr.decode("utf-8", "replace"), [p.decode() for p in params]


def run_sink(port: int, pipelining: bool = True) -> None:
    """
    Serve a counting-only sink on 127.0.0.1:PORT until killed (for the bench
    when Postfix's smtp-sink is missing).
    """
    from twisted.internet import reactor

    factory = SinkFactory(pipelining=pipelining, keep=False)
    reactor.listenTCP(port, factory, interface="127.0.0.1", backlog=256)
    reactor.run()
