"""
Tests of trackermail.ingress; shared fakes live here.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from trackermail.ingress.server import IngressFactory, IngressSettings
from trackermail.ingress.smtp import SMTPIngress

FQDN = "tracker.example.org"


class Stored:
    """
    One committed transaction of a L{FakeSpool}: unpacks as C{(data,
    first recipient, sender, deferred)}; C{envelope} has everything.
    """

    def __init__(self, writer: "FakeWriter", deferred: defer.Deferred):
        self.envelope = writer.envelope
        self.data = b"".join(writer.chunks)
        self.deferred = deferred

    def __iter__(self):
        return iter((self.data, self.envelope.recipients[0], self.envelope.sender,
                     self.deferred))

    def __getitem__(self, index):
        return tuple(self)[index]


class FakeWriter:
    """A transaction writer that keeps the message in memory."""

    def __init__(self, spool: "FakeSpool", envelope):
        self.spool = spool
        self.committer = spool
        self.envelope = envelope
        self.chunks: list[bytes] = []
        self.aborted = False
        self.pending = 0

    def write(self, data: bytes) -> None:
        if data:
            self.chunks.append(bytes(data))

    def commit(self) -> defer.Deferred:
        d = defer.Deferred()
        self.spool.calls.append(Stored(self, d))
        if self.spool.auto:
            d.callback(f"/spool/new/{self.envelope.queue_id}")
        return d

    def abort(self) -> None:
        self.aborted = True
        self.spool.aborted.append(self)


class FakeSpool:
    """
    Records transactions and hands out unfired Deferreds for their commits,
    so tests decide when (and whether) each message is durable.
    """

    def __init__(self, auto: bool = False, free: int | None = None):
        self.calls: list[Stored] = []
        self.aborted: list[FakeWriter] = []
        self.opened: list[FakeWriter] = []
        self.auto = auto
        self.free = free

    def open_transaction(self, envelope) -> FakeWriter:
        writer = FakeWriter(self, envelope)
        self.opened.append(writer)
        return writer

    def when_drained(self, writer) -> defer.Deferred:
        return defer.succeed(None)

    def free_bytes(self) -> int:
        return 10**12 if self.free is None else self.free

    def fire_all(self):
        for stored in self.calls:
            if not stored.deferred.called:
                stored.deferred.callback(f"/spool/new/{stored.envelope.queue_id}")

    @property
    def recipients(self):
        return [r for c in self.calls for r in c.envelope.recipients]


def connect(protocol_class=SMTPIngress, spool=None, peer=None, max_size=10_000,
            accept_unqualified=False, tls_context=None, transport=None, factory=None,
            clock=None, **limits):
    """
    A protocol connected to a StringTransport; returns (protocol, transport,
    spool, clock).
    """
    if factory is None:
        clock = clock or task.Clock()
        spool = spool if spool is not None else FakeSpool()
        settings = IngressSettings(
            fqdn=FQDN, accept_unqualified=accept_unqualified, max_message_size=max_size,
            spool=spool, reactor=clock, tls_context=tls_context, **limits,
        )
        factory = IngressFactory(settings)
        factory.protocol = protocol_class
    else:
        spool, clock = factory.settings.spool, factory.settings.reactor
    proto = factory.buildProtocol(None)
    if transport is None:
        transport = StringTransport(
            peerAddress=peer or IPv4Address("TCP", "192.0.2.7", 40000),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 25),
        )
    proto.makeConnection(transport)
    return proto, transport, spool, clock


def replies(transport) -> list[bytes]:
    """
    Reply lines written so far (then cleared).
    """
    lines = transport.value().split(b"\r\n")
    transport.clear()
    return [line for line in lines if line]
