"""
Tests of trackermail.ingress; shared fakes live here.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from trackermail.ingress.smtp import IngressFactory, IngressSettings, SMTPIngress

FQDN = "tracker.example.org"


class FakeSpool:
    """
    Records deliveries and hands out unfired Deferreds, so tests decide when
    (and whether) each copy is durable.
    """

    def __init__(self, auto: bool = False):
        self.calls: list[tuple[bytes, str, str | None, defer.Deferred]] = []
        self.auto = auto

    def deliver(self, data, recipient, mail_from):
        d = defer.Deferred()
        self.calls.append((data, recipient, mail_from, d))
        if self.auto:
            d.callback(f"/spool/new/{len(self.calls)}")
        return d

    def fire_all(self):
        for i, (_, _, _, d) in enumerate(self.calls):
            if not d.called:
                d.callback(f"/spool/new/{i}")

    @property
    def recipients(self):
        return [c[1] for c in self.calls]


def connect(protocol_class=SMTPIngress, spool=None, peer=None, max_size=10_000,
            accept_unqualified=False, tls_context=None, transport=None):
    """
    A protocol connected to a StringTransport; returns (protocol, transport,
    spool, clock).
    """
    clock = task.Clock()
    spool = spool if spool is not None else FakeSpool()
    settings = IngressSettings(
        fqdn=FQDN, accept_unqualified=accept_unqualified, max_message_size=max_size,
        spool=spool, reactor=clock, tls_context=tls_context,
    )
    factory = IngressFactory(settings)
    factory.protocol = protocol_class
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
