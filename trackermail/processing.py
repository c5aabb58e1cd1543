# -*- test-case-name: tests.test_processing -*-
"""
Processing: the spool watcher, and the chain each message goes through.

L{SpoolWatcher} feeds the spool's C{new/} to the processor, a bounded
number at a time: found by inotify, by a scan at start and by a periodic
rescan. A message processed without error is removed; one that can never
be processed goes to C{failed/} with the reason; a temporary failure is
retried (150 s, 300 s, 600 s, 30 min, 1 h, 2 h), then parked in C{broken/}.

L{Processor} runs one message: read its envelope and start, parse, then
for each recipient route to the service's handler and run it in ONE store
transaction with the processed-ledger row of (message, recipient). So a
recipient is processed fully or not at all, and a message seen again after
a crash between commit and unlink is recognised and not processed twice.
Handlers read at most L{HEAD_LIMIT} bytes of a message; what they forward
is read from the spool file in pieces by the outbox.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from typing import Any, Callable, Iterable

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from trackermail import metrics, routing
from trackermail.config import Config
from trackermail.errors import PermanentFailure, TemporaryFailure, TrackerError
from trackermail.handling import Context, Incoming, Outcome
from trackermail.ingress.spool import (
    BadSpoolFile,
    SpoolMessage,
    delivery_start,
    envelope_sender_of,
    open_message,
)
from trackermail.message import header, parse_message
from trackermail.store.ledger import mark_processed

log = Logger()

#: The most of a message handlers read (and that is parsed): control
#: commands, bounce reports and classification are all in there. What is
#: forwarded is the whole message, read from the spool in pieces.
HEAD_LIMIT = 1024 * 1024
DEFAULT_RETRY_DELAYS = (150, 300, 600, 1800, 3600, 7200)


class HandlerCrashed(PermanentFailure):
    """A handler raised something nobody expected (a bug): logged, parked in failed/."""


class UnknownService(PermanentFailure):
    """The delivery address routes to a service nobody implements."""


class MemoryMessage(SpoolMessage):
    """A message given as bytes (tests, tools): no envelope, no file."""

    def __init__(self, raw: bytes):
        offset, lines = delivery_start(raw[:4096])
        super().__init__("", None, offset, len(raw) - offset, delivery_lines=lines)
        self._raw = raw

    @property
    def name(self) -> str:
        return self.content_digest()[:24]

    def head(self, limit: int) -> bytes:
        return self._raw[self.offset: self.offset + limit]

    def body(self) -> bytes:  # type: ignore[override]
        return self._raw[self.offset:]

    def content_digest(self) -> str:
        if self._digest is None:
            self._digest = hashlib.sha256(self._raw[self.offset:]).hexdigest()
        return self._digest


class Processor:
    """
    Runs messages through the pipeline. C{handlers} maps a service name
    (C{control}, C{dispatch}, C{team}, C{bounces}) to a handler.
    """

    def __init__(self, config: Config, store, handlers: dict[str, Callable],
                 vendor=None, clock=None, ready: Callable[[], Deferred] | None = None):
        self.config = config
        self._ready = ready
        self.thread_parse_over: int | None = 256 * 1024
        self.store = store
        self.handlers = dict(handlers)
        self.vendor = vendor
        self._now = (clock.seconds if clock is not None else time.time)

    def context(self, now: float | None = None) -> Context:
        return Context(self.config, self.vendor, self._now() if now is None else now)

    # Entry points

    def process_file(self, path: str) -> Deferred:
        """
        Process a spool file (or any file holding one mail); fires with the
        list of L{Outcome}s, one per recipient.
        """
        try:
            message = open_message(path)
        except FileNotFoundError:
            # Already processed and removed by another run: nothing to do.
            return defer.succeed([Outcome("gone", path)])
        except BadSpoolFile as e:
            return defer.fail(PermanentFailure(str(e)))
        except OSError as e:
            return defer.fail(TemporaryFailure(f"cannot read {path}: {e.strerror}"))
        return self.process_message(message)

    def process_bytes(self, raw: bytes) -> Deferred:
        """
        Process one message given as bytes, delivered to the one address its
        C{Delivered-To} (or similar) header names; fires with its L{Outcome}.
        """
        d = self.process_message(MemoryMessage(raw))
        d.addCallback(lambda outcomes: outcomes[0])
        return d

    def process_message(self, message: SpoolMessage) -> Deferred:
        d = Deferred.fromCoroutine(self._process(message))
        d.addErrback(_count_failure)
        return d

    # The chain

    def targets(self, message: SpoolMessage, msg) -> list[tuple[str, Any]]:
        """
        C{(address, route)} of every recipient: the envelope's routes as
        computed at RCPT, else the delivery headers of the message.
        """
        envelope = message.envelope
        fqdn = self.config.tracker.fqdn
        if envelope is None:
            address = routing.find_delivery_address(msg, fqdn, extra=message.delivery_lines)
            return [(address, self._route(address))]
        if envelope.routes is not None:
            return list(zip(envelope.recipients, envelope.routes))
        return [(address, self._route(address)) for address in envelope.recipients]

    def _route(self, address: str):
        try:
            return routing.route_address(address, self.config.tracker.fqdn,
                                         self.config.tracker.accept_unqualified)
        except routing.Rejection as e:
            raise PermanentFailure(f"delivery address {address}: {e}")

    def _parse(self, head: bytes):
        return parse_message(head)

    async def _process(self, message: SpoolMessage) -> list[Outcome]:
        if self._ready is not None:
            await self._ready()
        head = message.head(HEAD_LIMIT)
        if self.thread_parse_over is not None and len(head) > self.thread_parse_over:
            # Parsing is pure Python and linear in the size. In a thread the
            # reactor keeps getting the GIL meanwhile, so SMTP replies and
            # sends do not stall.
            from twisted.internet.threads import deferToThread

            msg = await deferToThread(self._parse, head)
        else:
            msg = self._parse(head)
        targets = self.targets(message, msg)
        body = head if message.size <= len(head) else message.body()
        sender = envelope_sender_of(message)
        msgid = header(msg, "Message-ID").strip()
        key = message.queue_id if message.envelope is not None else message.content_digest()
        outcomes: list[Outcome] = []
        failures: list[str] = []
        errors: list[PermanentFailure] = []
        for address, route in targets:
            incoming = Incoming(raw=head, msg=msg, route=route, envelope_from=sender,
                                digest=f"{key}:{address.lower()}", msgid=msgid,
                                queue_id=message.queue_id, body=body)
            try:
                outcomes.append(await self._run(incoming))
            except PermanentFailure as e:
                # The other recipients go on; the file is parked once they
                # are done, and a requeue skips them (the ledger knows).
                errors.append(e)
                failures.append(f"<{address}>: {e}")
                log.error("cannot process {queue_id} for {address}: {reason}",
                          queue_id=message.queue_id, address=address, reason=str(e),
                          msgid=msgid)
        if len(errors) == 1 and len(targets) == 1:
            raise errors[0]
        if failures:
            raise PermanentFailure("; ".join(failures))
        return outcomes

    async def _run(self, incoming: Incoming) -> Outcome:
        route = incoming.route
        handler = self.handlers.get(route.service)
        if handler is None:
            raise UnknownService(f"no handler for service {route.service!r} ({route.address})")
        started = time.perf_counter()
        ctx = Context(self.config, self.vendor, self._now(), origin=incoming.queue_id)

        def transaction():
            fresh = yield from mark_processed(incoming.digest, ctx.now, route.service)
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
            log.failure("processing {queue_id} {msgid} failed unexpectedly",
                        queue_id=incoming.queue_id, msgid=incoming.msgid)
            raise HandlerCrashed(f"processing failed: {e!r}") from e
        metrics.processed(route.service, outcome.action,
                          time.perf_counter() - started, outcome.fields)
        log.info(
            "processed {queue_id} {msgid} for {address}: {action} {detail}",
            queue_id=incoming.queue_id,
            msgid=incoming.msgid,
            address=route.address,
            service=route.service,
            action=outcome.action,
            detail=outcome.detail,
            **{k: v for k, v in outcome.fields.items()
               if k not in ("queue_id", "msgid", "address", "service", "action", "detail")},
        )
        return outcome


def _count_failure(failure):
    metrics.processing_failed(permanent=failure.check(PermanentFailure) is not None)
    return failure


def _describe(failure: Failure) -> str:
    value = failure.value
    return f"{type(value).__name__}: {value}"


class SpoolWatcher(service.Service):
    """
    Feed every message in C{new/} to C{process}, a bounded number at a time.

    C{process(path)} returns a Deferred. Success: the file is removed.
    L{PermanentFailure}: the file goes to C{failed/}. Anything else is
    temporary: retried after C{retry_delays}, then moved to C{broken/}.

    @param notifier_factory: C{() -> INotify-like} (C{startReading},
        C{watch}, C{loseConnection}); None uses C{twisted.internet.inotify}
        when the platform has it. Tests pass a fake.
    """

    name = "spool-watcher"

    def __init__(
        self,
        spool: Any,
        process: Callable[[str], Deferred],
        clock: Any = None,
        concurrency: int = 8,
        rescan_interval: float = 60,
        retry_delays: Iterable[float] = DEFAULT_RETRY_DELAYS,
        notifier_factory: Callable[[], Any] | None = None,
    ):
        if clock is None:
            from twisted.internet import reactor as clock
        self.spool = spool
        self.process = process
        self.clock = clock
        self.concurrency = max(1, concurrency)
        self.rescan_interval = rescan_interval
        self.retry_delays = tuple(retry_delays)
        self._notifier_factory = notifier_factory
        self._notifier = None
        self._rescan: task.LoopingCall | None = None
        self._ready: deque[str] = deque()
        self._known: set[str] = set()
        self._waiting: dict[str, Any] = {}
        self._in_flight: dict[str, Deferred] = {}
        self._idle_waiters: list[Deferred] = []
        self._stopping = False
        self._pumping = False

    # Service

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        # Watch first, then scan: a file arriving in between is seen at least
        # once, and the name set drops the duplicate.
        self._start_notifier()
        self.scan()
        if self.rescan_interval:
            self._rescan = task.LoopingCall(self.scan)
            self._rescan.clock = self.clock
            self._rescan.start(self.rescan_interval, now=False)

    def _start_notifier(self) -> None:
        factory = self._notifier_factory
        if factory is None:
            from twisted.python.runtime import platform

            if not platform.supportsINotify():
                log.warn("inotify is not available: relying on rescans every {interval}s",
                         interval=self.rescan_interval)
                return
            from twisted.internet import inotify

            factory = lambda: inotify.INotify(self.clock)  # noqa: E731
        from twisted.internet import inotify as _in

        mask = _in.IN_MOVED_TO | _in.IN_CREATE | _in.IN_CLOSE_WRITE
        try:
            notifier = factory()
            notifier.startReading()
            notifier.watch(FilePath(os.fsencode(self.spool.dir("new"))), mask=mask,
                           callbacks=[self._notified])
        except Exception:
            log.failure("cannot watch {path}: relying on rescans", path=self.spool.dir("new"))
            return
        self._notifier = notifier

    def stopService(self) -> Deferred:
        super().stopService()
        self._stopping = True
        if self._rescan is not None and self._rescan.running:
            self._rescan.stop()
        self._rescan = None
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None
        for call in self._waiting.values():
            if call.active():
                call.cancel()
        self._waiting.clear()
        self._known.difference_update(self._ready)
        self._ready.clear()
        # Let messages in flight finish; anything left is picked up again by
        # the scan at the next start.
        return defer.DeferredList(list(self._in_flight.values()), consumeErrors=True)

    # Discovery

    def _notified(self, _ignored: Any, filepath: FilePath, mask: int) -> None:
        self.add(os.fsdecode(filepath.basename()))

    def add(self, name: str) -> None:
        """Queue message C{name} in C{new/} unless it is already known."""
        if self._stopping or name in self._known or name.startswith("."):
            return
        self._known.add(name)
        state = self.spool.read_retry_state(name)
        if state is not None:
            delay = float(state.get("next", 0)) - self.clock.seconds()
            if delay > 0:
                self._schedule(name, delay)
                return
        self._ready.append(name)
        self._pump()

    def scan(self) -> None:
        """Queue every message in C{new/} that is not known yet."""
        try:
            names = self.spool.list_new()
        except OSError:
            log.failure("cannot scan {path}", path=self.spool.dir("new"))
            return
        for name in names:
            self.add(name)
        self.spool.drop_orphan_states(self._known)

    def _schedule(self, name: str, delay: float) -> None:
        self._waiting[name] = self.clock.callLater(delay, self._retry_due, name)

    def _retry_due(self, name: str) -> None:
        self._waiting.pop(name, None)
        self._ready.append(name)
        self._pump()

    # Processing

    def _pump(self) -> None:
        # A process() that answers synchronously re-enters here from
        # _finished; the outer loop carries on instead of recursing.
        if self._pumping:
            return
        self._pumping = True
        try:
            self._pump_once()
        finally:
            self._pumping = False
        self._check_idle()

    def _pump_once(self) -> None:
        while self._ready and len(self._in_flight) < self.concurrency and not self._stopping:
            name = self._ready.popleft()
            path = self.spool.new_path(name)
            if not os.path.exists(path):
                self._known.discard(name)
                continue
            d = defer.maybeDeferred(self.process, path)
            self._in_flight[name] = d
            d.addCallbacks(self._succeeded, self._failed, callbackArgs=(name,),
                           errbackArgs=(name,))
            d.addErrback(self._bookkeeping_failed, name)
            d.addCallback(self._finished, name)

    def _succeeded(self, _result: Any, name: str) -> bool:
        self.spool.discard(name)
        return False

    def _failed(self, failure: Failure, name: str) -> bool:
        """Park or reschedule C{name}; True when it stays known, waiting."""
        reason = _describe(failure)
        if failure.check(PermanentFailure):
            self.spool.park(name, "failed", reason)
            log.error("moved {name} to failed/: {reason}", name=name, reason=reason)
            return False
        if not failure.check(TemporaryFailure):
            log.failure("unexpected error processing {name}", failure, name=name)
        state = self.spool.read_retry_state(name) or {}
        try:
            attempts = int(state.get("attempts", 0)) + 1
        except (TypeError, ValueError):
            attempts = 1
        if attempts > len(self.retry_delays):
            self.spool.park(name, "broken", f"{reason}\n(gave up after {attempts} attempts)")
            log.error("moved {name} to broken/ after {attempts} attempts: {reason}",
                      name=name, attempts=attempts, reason=reason)
            return False
        delay = self.retry_delays[attempts - 1]
        self.spool.write_retry_state(
            name, {"attempts": attempts, "next": self.clock.seconds() + delay, "reason": reason}
        )
        log.warn("temporary failure for {name} (attempt {attempts}), retry in {delay}s: {reason}",
                 name=name, attempts=attempts, delay=delay, reason=reason)
        if self._stopping:
            return False
        self._schedule(name, delay)
        return True

    def _bookkeeping_failed(self, failure: Failure, name: str) -> bool:
        # The file stays in new/ and the next scan offers it again.
        log.failure("spool bookkeeping failed for {name}", failure, name=name)
        return False

    def _finished(self, keep: bool, name: str) -> None:
        self._in_flight.pop(name, None)
        if not keep:
            self._known.discard(name)
        self._pump()

    def _check_idle(self) -> None:
        if not self._ready and not self._in_flight and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def when_idle(self) -> Deferred:
        """
        A Deferred that fires when nothing is queued or being processed
        (messages waiting for a retry do not count).
        """
        d: Deferred = Deferred()
        self._idle_waiters.append(d)
        self._check_idle()
        return d

    @property
    def waiting_for_retry(self) -> list[str]:
        return sorted(self._waiting)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)
