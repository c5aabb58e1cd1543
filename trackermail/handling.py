# -*- test-case-name: tests.test_processing -*-
"""
What handlers and the processor share: the message as a handler sees it
(L{Incoming}), what else it may know (L{Context}), what it reports
(L{Outcome}), and the handler type itself.

A handler is a store program (see L{trackermail.store.sql}): a generator
function C{handler(incoming, ctx)} that reads the store, decides, writes
its effects (state changes, outbox rows, news) by yielding SQL, and returns
an L{Outcome}. It never sends mail, sleeps or reads the clock: the processor
runs it in one transaction with the processed-ledger row, and the outbox
sends what it queued.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from typing import Any, Callable, Generator

from trackermail.config import Config


@dataclass(frozen=True)
class Incoming:
    """
    A received message as handlers see it, for one of its recipients.

    @ivar raw: the message (its first megabyte when it is bigger: see
        C{body}), without the envelope the spool keeps beside it.
    @ivar msg: C{raw} parsed.
    @ivar route: where the recipient address leads (service, package...).
    @ivar envelope_from: the envelope sender; C{""} for the null sender,
        None when unknown.
    @ivar digest: the processed-ledger key of (message, recipient).
    @ivar queue_id: the id naming the message in every log line, from
        reception to its last copy.
    @ivar body: the whole message to forward: C{bytes}, or a body source
        read from the spool in pieces (C{len()}, C{chunks(size)}).
    """

    raw: bytes
    msg: EmailMessage
    route: Any  # routing.Route
    envelope_from: str | None
    digest: str
    msgid: str
    queue_id: str = ""
    body: Any = None

    @property
    def whole(self) -> Any:
        """The whole message: C{body}, or C{raw} when no body was given."""
        return self.raw if self.body is None else self.body


@dataclass(frozen=True)
class Context:
    """
    What a handler may know besides the message: configuration, the vendor
    rules, and the time (handlers never read the clock themselves).
    """

    config: Config
    vendor: Any
    now: float
    #: The queue id of the message being handled: the mail a handler queues
    #: carries it, so the log lines of its copies name it too.
    origin: str = ""

    @property
    def fqdn(self) -> str:
        return self.config.tracker.fqdn

    @property
    def today(self) -> str:
        return datetime.fromtimestamp(self.now, timezone.utc).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Outcome:
    """
    What a handler did, for the log: C{action} is a short verb
    (C{forwarded}, C{dropped}, C{replied}, ...).
    """

    action: str
    detail: str = ""
    fields: dict = field(default_factory=dict)


#: C{handler(incoming, ctx)}: a store program that fires with an L{Outcome}.
Handler = Callable[[Incoming, Context], Generator[Any, Any, Outcome]]
