"""
Open-relay probes: the classic relay test list, sent as RCPT TO to the ESMTP
and the LMTP server. The tracker receives mail for its own addresses only:
every probe is refused with a 5xx reply at RCPT time (550 5.7.1 for another
domain, 550 5.1.1 or 501 for what is malformed or unknown here), and nothing
is ever spooled for it.
"""

from __future__ import annotations

import os
import smtplib

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.ingress import FQDN, FakeSpool, connect, replies
from trackermail.ingress.lmtp import LMTPIngress
from trackermail.ingress.service import build_lmtp_factory, build_smtp_factory
from trackermail.ingress.smtp import SMTPIngress
from trackermail.ingress.spool import Spool

# Another domain, however disguised: Relay access denied.
OTHER_DOMAIN = [
    "user@other.example",
    "USER@OTHER.EXAMPLE",
    "user@other.example.",
    "user@OTHER.example.",
    "user@tracker.example.org.other.example",
    "user@tracker.example.org-other.example",
    "user@xtracker.example.org",
    "control@sub.tracker.example.org",
    "control@example.org",
    "control@tracker.example",
    "control@localhost",
    "control@127.0.0.1",
    "postmaster@other.example",
    "bounces+x@other.example",
    "dispatch+dpkg@other.example",
    "@tracker.example.org:user@other.example",
    "@tracker.example.org,@relay.example:user@other.example",
    "control@tracker.example.org%other.example",
    "control%tracker.example.org@other.example",
    "user%tracker.example.org@other.example",
    '"control@tracker.example.org"@other.example',
    '"user@tracker.example.org"@other.example',
    "tracker.example.org!user@other.example",
]

# Relay syntax aimed through our domain, literals, and garbage: refused as an
# unknown user (550 5.1.1) or as bad syntax (501).
MALFORMED = [
    "user%other.example@tracker.example.org",
    "user%other.example@TRACKER.EXAMPLE.ORG",
    "user%other.example@tracker.example.org.",
    "other.example!user@tracker.example.org",
    "other.example!user",
    "user%other.example",
    '"user@other.example"@tracker.example.org',
    '"user%other.example"@tracker.example.org',
    "user@other.example@tracker.example.org",
    "control@tracker.example.org@other.example",
    "user\\@other.example@tracker.example.org",
    "dispatch+x%other.example@tracker.example.org",
    "dispatch+dpkg%other.example@tracker.example.org",
    "dispatch+dpkg!other.example@tracker.example.org",
    "team+a@b@tracker.example.org",
    "team+perl%other.example@tracker.example.org",
    "control+x%other.example@tracker.example.org",
    "user@[127.0.0.1]",
    "user@[192.0.2.1]",
    "control@[127.0.0.1]",
    "user@[IPv6:::1]",
    "user@[IPv6:2001:db8::1]",
    "user@[tracker.example.org]",
    "control@tracker.example.org:25",
    "user@other.example,control@tracker.example.org",
    "control@tracker.example.org,user@other.example",
    "user@other.example control@tracker.example.org",
    "",
    "@",
    "@tracker.example.org",
    "@other.example:",
]

RAW_PROBES = [
    b"RCPT TO:user@other.example",
    b"RCPT TO: <user@other.example>",
    b"RCPT TO:<user@other.example> NOTIFY=NEVER",
    b"RCPT TO:<user@other.example> ORCPT=rfc822;control@tracker.example.org",
    b"rcpt to:<user@other.example>",
    b"RCPT TO:<user@other.example\x00@tracker.example.org>",
    b"RCPT TO:<user@other.example\tcontrol@tracker.example.org>",
    b"RCPT TO:<us\xc3\xa9r@other.example>",
    b"RCPT TO:<control@tracker.example.org\xc3\xa9>",
    b"RCPT TO:<control@xn--tracker-.example.org>",
    b"RCPT TO:<<user@other.example>>",
]


def _is_refusal(line: bytes, other_domain: bool) -> bool:
    if other_domain:
        return line.startswith(b"550 5.7.1 ")
    return line.startswith(b"550 5.1.1 ") or line.startswith(b"501 5.")


class OpenRelayProbeTests(SynchronousTestCase):
    def session(self, protocol_class, accept_unqualified):
        spool = FakeSpool(auto=True)
        proto, t, _, _ = connect(protocol_class=protocol_class, spool=spool,
                                 accept_unqualified=accept_unqualified)
        replies(t)
        hello = b"LHLO" if protocol_class is LMTPIngress else b"EHLO"
        proto.dataReceived(hello + b" probe.example\r\nMAIL FROM:<probe@example.net>\r\n")
        self.assertEqual(replies(t)[-1], b"250 2.1.0 Ok")
        return proto, t, spool

    def check(self, probes, other_domain):
        for protocol_class in (SMTPIngress, LMTPIngress):
            for accept_unqualified in (False, True):
                for probe in probes:
                    proto, t, spool = self.session(protocol_class, accept_unqualified)
                    line = probe if isinstance(probe, bytes) else b"RCPT TO:<" + probe.encode() + b">"
                    proto.dataReceived(line + b"\r\nDATA\r\n")
                    rcpt_reply, data_reply = replies(t)
                    where = (protocol_class.__name__, accept_unqualified, probe)
                    self.assertTrue(_is_refusal(rcpt_reply, other_domain), (where, rcpt_reply))
                    self.assertEqual(data_reply, b"503 5.5.1 Error: need RCPT command", where)
                    self.assertEqual(spool.calls, [], where)

    def test_other_domains_denied(self):
        """Every address in another domain, however disguised, gets 550 5.7.1 Relay access denied."""
        self.check(OTHER_DOMAIN, other_domain=True)

    def test_relay_syntax_through_our_domain_refused(self):
        """Percent hacks, bang paths, quoted and literal addresses get 550 5.1.1 or 501."""
        self.check(MALFORMED, other_domain=False)

    def test_raw_command_variants_refused(self):
        """Odd spellings of RCPT TO (no brackets, parameters, NUL, 8-bit) never accept a foreign address."""
        for protocol_class in (SMTPIngress, LMTPIngress):
            for line in RAW_PROBES:
                proto, t, spool = self.session(protocol_class, True)
                proto.dataReceived(line + b"\r\nDATA\r\n")
                rcpt_reply, data_reply = replies(t)
                self.assertEqual(rcpt_reply[:1], b"5", (protocol_class.__name__, line, rcpt_reply))
                self.assertEqual(data_reply, b"503 5.5.1 Error: need RCPT command")
                self.assertEqual(spool.calls, [])

    def test_probes_mixed_with_a_real_recipient(self):
        """A transaction listing every probe and control@ stores one copy, for control@ only."""
        for protocol_class in (SMTPIngress, LMTPIngress):
            proto, t, spool = self.session(protocol_class, False)
            probes = OTHER_DOMAIN + MALFORMED
            lines = b"".join(b"RCPT TO:<" + p.encode() + b">\r\n" for p in probes)
            proto.dataReceived(lines + b"RCPT TO:<control@" + FQDN.encode() + b">\r\n"
                               b"DATA\r\nSubject: x\r\n\r\nx\r\n.\r\n")
            out = replies(t)
            self.assertTrue(all(line[:1] == b"5" for line in out[:len(probes)]))
            self.assertEqual(out[len(probes)], b"250 2.1.5 Ok")
            self.assertTrue(out[-1].startswith(b"250 2.0.0 "))
            self.assertEqual(spool.recipients, [f"control@{FQDN}"])

    def test_empty_domain_means_ours(self):
        """C{user@} is read as an unqualified address of our own domain: never a relay."""
        proto, t, spool = self.session(SMTPIngress, False)
        proto.dataReceived(b"RCPT TO:<user@>\r\nRCPT TO:<control@>\r\n")
        self.assertEqual(replies(t), [
            b"550 5.1.1 <user@" + FQDN.encode() + b">: Recipient address rejected: User unknown",
            b"250 2.1.5 Ok",
        ])

    def test_source_route_to_our_address_is_local(self):
        """A source route ending at one of our own addresses is delivered here (RFC 5321 C), not relayed."""
        proto, t, spool = self.session(SMTPIngress, False)
        proto.dataReceived(b"RCPT TO:<@other.example:control@" + FQDN.encode() + b">\r\n"
                           b"DATA\r\nSubject: x\r\n\r\nx\r\n.\r\n")
        out = replies(t)
        self.assertEqual(out[0], b"250 2.1.5 Ok")
        self.assertEqual(spool.recipients, [f"control@{FQDN}"])


def _probe_over_socket(kind: str, port: int, probes: list[str]) -> list[tuple[int, bytes]]:
    client = (smtplib.LMTP if kind == "lmtp" else smtplib.SMTP)("127.0.0.1", port, timeout=30)
    try:
        if kind == "lmtp":
            client.ehlo_or_helo_if_needed = lambda: None
            client.docmd("LHLO", "probe.example")
        else:
            client.ehlo("probe.example")
        client.docmd("MAIL", "FROM:<probe@example.net>")
        results = [client.docmd("RCPT", f"TO:<{p}>") for p in probes]
        results.append(client.docmd("DATA"))
        return results
    finally:
        client.close()


class LoopbackRelayProbeTests(TestCase):
    timeout = 60

    async def test_probes_over_real_sockets(self):
        """Over real TCP connections both servers refuse the probes and the spool stays empty."""
        from tests.support.pipeline import make_config

        config = make_config()
        spool = Spool(self.mktemp(), fsync=False)
        self.addCleanup(spool.close)
        probes = OTHER_DOMAIN[:8] + MALFORMED[:8]
        for kind, build in (("smtp", build_smtp_factory), ("lmtp", build_lmtp_factory)):
            port = reactor.listenTCP(0, build(config, spool, reactor), interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            results = await deferToThread(_probe_over_socket, kind, port.getHost().port, probes)
            for probe, (code, text) in zip(probes, results):
                self.assertTrue(500 <= code < 600, (kind, probe, code, text))
            self.assertEqual(results[-1][0], 503)
        self.assertEqual(os.listdir(spool.dir("new")), [])
        self.assertEqual(os.listdir(spool.dir("tmp")), [])
