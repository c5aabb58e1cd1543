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
    A received message as handlers see it.
    """

    raw: bytes
    msg: EmailMessage
    route: Any  # routing.Route
    envelope_from: str | None  # "" for the null sender, None when unknown
    digest: str
    msgid: str


@dataclass(frozen=True)
class Context:
    """
    What a handler may know besides the message: configuration, the vendor
    rules, and the time (handlers never read the clock themselves).
    """

    config: Config
    vendor: Any
    now: float

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
