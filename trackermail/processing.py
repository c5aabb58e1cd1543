# -*- test-case-name: tests.test_processing -*-
"""
The per-message pipeline: parse, find the delivery address, route to the
service's handler, commit.

A handler is a store program (see L{trackermail.store.sql}): a generator
function C{handler(incoming, ctx)} that reads the store, decides, and
writes its effects (state changes, outbox rows, news) by yielding SQL. The
processor runs it in ONE transaction together with the processed-ledger row
for the message's digest, so a message is either fully processed or not at
all, and a message seen again after a crash between commit and unlink is
recognised and not processed twice.
"""

from __future__ import annotations

import hashlib
import time
from typing import Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from trackermail import metrics, routing
from trackermail.config import Config
from trackermail.errors import PermanentFailure, TemporaryFailure, TrackerError
from trackermail.handling import Context, Incoming, Outcome
from trackermail.message import header, parse_message
from trackermail.store.ledger import mark_processed

log = Logger()


class HandlerCrashed(PermanentFailure):
    """A handler raised something nobody expected (a bug): logged, parked in failed/."""


class UnknownService(PermanentFailure):
    """The delivery address routes to a service nobody implements."""


def envelope_sender(msg) -> str | None:
    value = header(msg, "Return-Path", None)
    if value is None:
        return None
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value.strip()


class Processor:
    """
    Runs messages through the pipeline. C{handlers} maps a service name
    (C{control}, C{dispatch}, C{team}, C{bounces}) to a handler.
    """

    def __init__(self, config: Config, store, handlers: dict[str, Callable],
                 vendor=None, clock=None, ready: Callable[[], Deferred] | None = None):
        self.config = config
        self._ready = ready
        self.thread_parse_over: int | None = 1024 * 1024
        self.store = store
        self.handlers = dict(handlers)
        self.vendor = vendor
        self._now = (clock.seconds if clock is not None else time.time)

    def prepare(self, raw: bytes) -> Incoming:
        """
        Parse and route: everything before the store. Raises
        L{PermanentFailure} for a message that can never be processed.
        """
        msg = parse_message(raw)
        fqdn = self.config.tracker.fqdn
        address = routing.find_delivery_address(msg, fqdn)
        try:
            route = routing.route_address(
                address, fqdn, self.config.tracker.accept_unqualified
            )
        except routing.Rejection as e:
            raise PermanentFailure(f"delivery address {address}: {e}")
        if route.service not in self.handlers:
            raise UnknownService(f"no handler for service {route.service!r} ({address})")
        return Incoming(
            raw=raw,
            msg=msg,
            route=route,
            envelope_from=envelope_sender(msg),
            digest=hashlib.sha256(raw).hexdigest(),
            msgid=header(msg, "Message-ID", "").strip(),
        )

    def process_bytes(self, raw: bytes) -> Deferred:
        """
        Process one message; fires with an L{Outcome}, or fails with
        L{PermanentFailure} / L{TemporaryFailure}.
        """
        d = Deferred.fromCoroutine(self._process(raw))
        d.addErrback(_count_failure)
        return d

    def process_file(self, path: str) -> Deferred:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            # Already processed and removed by another run: nothing to do.
            return defer.succeed(Outcome("gone", path))
        except OSError as e:
            return defer.fail(TemporaryFailure(f"cannot read {path}: {e.strerror}"))
        return self.process_bytes(raw)

    def context(self, now: float | None = None) -> Context:
        return Context(self.config, self.vendor, self._now() if now is None else now)

    async def _process(self, raw: bytes) -> Outcome:
        if self._ready is not None:
            await self._ready()
        started = time.perf_counter()
        if self.thread_parse_over is not None and len(raw) > self.thread_parse_over:
            # Parsing is pure Python and linear in the size: a 20 MiB message
            # takes about a second. In a thread the reactor keeps getting the
            # GIL meanwhile, so SMTP replies and sends do not stall.
            from twisted.internet.threads import deferToThread

            incoming = await deferToThread(self.prepare, raw)
        else:
            incoming = self.prepare(raw)
        ctx = Context(self.config, self.vendor, self._now())
        handler = self.handlers[incoming.route.service]

        def transaction():
            fresh = yield from mark_processed(incoming.digest, ctx.now,
                                                  incoming.route.service)
            if not fresh:
                return Outcome("duplicate", "already processed")
            return (yield from handler(incoming, ctx))

        try:
            outcome = await self.store.run(transaction)
        except (TemporaryFailure, PermanentFailure):
            raise
        except TrackerError as e:
            # A handler's error that nobody declared temporary (a name the
            # store rejects, an unknown team...) will fail the same way
            # every time: retrying it for hours helps nobody.
            raise PermanentFailure(f"{type(e).__name__}: {e}") from e
        except Exception as e:
            # A bug or an unexpected driver error: logged with its traceback,
            # and the mail is parked in failed/ for the operator, who can
            # requeue it once the cause is fixed.
            log.failure("processing {msgid} failed unexpectedly", msgid=incoming.msgid)
            raise HandlerCrashed(f"processing failed: {e!r}") from e
        metrics.processed(incoming.route.service, outcome.action,
                          time.perf_counter() - started, outcome.fields)
        log.info(
            "processed {msgid} for {address}: {action} {detail}",
            msgid=incoming.msgid,
            address=incoming.route.address,
            service=incoming.route.service,
            action=outcome.action,
            detail=outcome.detail,
            **{k: v for k, v in outcome.fields.items()
               if k not in ("msgid", "address", "service", "action", "detail")},
        )
        return outcome


def _count_failure(failure):
    metrics.processing_failed(permanent=failure.check(PermanentFailure) is not None)
    return failure
