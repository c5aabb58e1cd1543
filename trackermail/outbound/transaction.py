# -*- test-case-name: tests.outbound.test_connection -*-
"""
One SMTP transaction (a message for a set of recipients) as the pool queues
it and a connection runs it, and what a connection asks of its owner.
"""

from __future__ import annotations

from typing import Optional, Sequence
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred

from trackermail.outbound.interface import Reply
from trackermail.outbound.wire import encode_chunks


class Transaction:
    """
    One message for one set of recipients, and what became of it.

    C{deferred} fires with recipient -> L{Reply} for every recipient; it
    never errbacks.
    """

    __slots__ = (
        "mail_from", "recipients", "data", "deferred", "results", "accepted",
        "mail_reply", "data_sent", "rcpts_pending", "requeued", "done", "refused",
        "_chunks", "_size", "_ascii",
    )

    def __init__(self, mail_from: str, recipients: Sequence[str], data):
        self.mail_from = mail_from
        # A recipient listed twice gets one copy and one result.
        self.recipients = list(dict.fromkeys(recipients))
        self.data = data
        self.deferred: Deferred = Deferred()
        self.requeued = 0
        self.done = False
        self._chunks: Optional[list[bytes]] = None
        self._size = 0
        self._ascii = True
        self.reset()

    def reset(self) -> None:
        """
        Forget the outcome of an attempt that never reached DATA content.
        """
        self.results: dict[str, Reply] = {}
        self.accepted: list[str] = []
        self.mail_reply: Optional[Reply] = None
        self.data_sent = False
        self.refused = False
        self.rcpts_pending = 0

    def _encode(self) -> None:
        if self._chunks is None:
            self._chunks, self._size, self._ascii = encode_chunks(self.data)

    @property
    def chunks(self) -> list[bytes]:
        """The DATA content, "." line included, as chunks to write in order."""
        self._encode()
        return self._chunks

    @property
    def size(self) -> int:
        """The content size in octets (for SIZE=), without the "." line."""
        self._encode()
        return self._size

    @property
    def ascii(self) -> bool:
        self._encode()
        return self._ascii

    def finish(self, fallback: Reply) -> None:
        """
        Fire the Deferred. Recipients without their own reply get the MAIL
        reply if MAIL failed, else C{fallback}.
        """
        if self.done:
            return
        self.done = True
        # The encoded content is not needed any more: let it go now rather
        # than when the last reference to the transaction does.
        self._chunks = None
        self.data = None
        default = self.mail_reply or fallback
        results = self.results
        final = {r: results.get(r, default) for r in self.recipients}
        self.deferred.callback(final)

    def fail_all(self, result: Reply) -> None:
        self.results = {}
        self.mail_reply = None
        self.finish(result)


class TransactionSource(TypingProtocol):
    """
    What a connection needs from its owner (the pool).
    """

    def next_transaction(self, conn) -> Optional[Transaction]:
        ...

    def connection_ready(self, conn) -> None:
        ...

    def connection_failed(self, conn, result: Reply) -> None:
        ...

    def connection_closed(self, conn, requeue: list[Transaction]) -> None:
        ...
