# -*- test-case-name: tests.ingress.test_lmtp -*-
"""
The LMTP server (RFC 2033) on C{[lmtp] listen}.

Twisted has no LMTP: this is the ESMTP machinery of L{smtp} with C{LHLO}
instead of HELO/EHLO and, after the final dot, one reply per accepted
recipient in RCPT order (duplicates included), so a disk error for one copy
defers only that recipient.
"""

from __future__ import annotations

from typing import Any

from trackermail.ingress.smtp import (
    IngressFactory,
    IngressProtocol,
    settings_from_config,
)


class LMTPIngress(IngressProtocol):
    protocol_name = "LMTP"

    def greeting(self) -> bytes:
        return self.host + b" LMTP trackermail"

    def do_LHLO(self, rest: bytes) -> None:
        self._hello(rest, extended=True)

    def do_HELO(self, rest: bytes) -> None:
        self.sendCode(500, b"5.5.1 Error: this is LMTP, use LHLO")

    do_EHLO = do_HELO

    def _reply_after_data(self, rcpts: list[str], outcomes: dict[str, tuple[int, bytes]],
                          queue_id: str) -> None:
        for rcpt in rcpts:
            code, text = outcomes[rcpt.lower()]
            self.sendCode(code, text[:6] + b"<" + rcpt.encode("ascii", "replace") + b"> " + text[6:])


def build_lmtp_factory(config: Any, spool: Any, reactor: Any) -> IngressFactory:
    """
    The LMTP server factory for C{config} (no STARTTLS: LMTP is local).
    """
    factory = IngressFactory(settings_from_config(config, spool, reactor, tls=False))
    factory.protocol = LMTPIngress
    return factory
