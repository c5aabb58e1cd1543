# -*- test-case-name: tests.ingress.test_lmtp -*-
"""
The LMTP server (RFC 2033) on C{[lmtp] listen}.

Twisted has no LMTP: this is the ESMTP machinery of L{smtp} with C{LHLO}
instead of HELO/EHLO and, after the final dot, one reply per accepted
recipient in RCPT order (duplicates included). The transaction is one
spool file, so every recipient gets the same reply.
"""

from __future__ import annotations

from trackermail.ingress.smtp import (
    IngressProtocol,
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

    def _reply_after_data(self, rcpts: list[str], reply: tuple[int, bytes],
                          queue_id: str) -> None:
        # One transaction, one file: every recipient gets the same outcome.
        code, text = reply
        for rcpt in rcpts:
            self.sendCode(code, text[:6] + b"<" + rcpt.encode("ascii", "replace") + b"> " + text[6:])
