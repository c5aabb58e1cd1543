# -*- test-case-name: tests.outbound.test_sender -*-
"""
The outbox sender: claims due deliveries in batches, sends them through an
L{IOutboundTransport} (the SMTP connection pool), and records each result.

- 2xx: sent. 4xx or a connection failure: retried with exponential backoff
  (C{retry_initial} doubling up to C{retry_max}) until C{give_up_days} after
  the delivery was queued, then failed. 5xx: failed at once and, through
  C{on_permanent_failure}, counted as a bounce of that address.
- It wakes when the store notifies C{outbox} (PostgreSQL LISTEN/NOTIFY, an
  in-process signal on SQLite) and otherwise sleeps until the next retry is
  due (at most C{poll_interval}).
- Results of a batch are recorded in one transaction; the next batch is
  claimed while the previous one is still being sent.
"""

from __future__ import annotations

import os
import socket
from collections import OrderedDict

from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from trackermail import metrics
from trackermail.errors import TemporaryFailure
from trackermail.store.outbox import (
    bodies,
    claim_due,
    mark_failed,
    mark_retry,
    mark_sent,
    next_due,
    purge_finished,
)

log = Logger()


class _BodyCache:
    """
    Bodies by message id: a fan-out sends one body to thousands of
    recipients, so it is read from the store once, not per delivery.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024):
        self._items: OrderedDict[int, bytes] = OrderedDict()
        self._bytes = 0
        self._max = max_bytes

    def get(self, mid):
        body = self._items.get(mid)
        if body is not None:
            self._items.move_to_end(mid)
        return body

    def put(self, mid, body: bytes) -> None:
        if mid in self._items:
            return
        self._items[mid] = body
        self._bytes += len(body)
        while self._bytes > self._max and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old)


class OutboxSender(service.Service):
    name = "outbound"

    def __init__(self, store, transport, clock=None, *, node: str | None = None,
                 batch_size: int = 500, lease: float = 600.0,
                 retry_initial: float = 60.0, retry_max: float = 3600.0,
                 give_up_days: float = 5.0, poll_interval: float = 30.0,
                 on_permanent_failure=None, ready=None,
                 max_inflight_bytes: int = 32 * 1024 * 1024,
                 keep_sent: float = 86400.0):
        if clock is None:
            from twisted.internet import reactor as clock
        self.store = store
        self.transport = transport
        self.clock = clock
        self.node = node or f"{socket.gethostname()}:{os.getpid()}"
        self.batch_size = batch_size
        self.lease = lease
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.give_up = give_up_days * 86400
        self.poll_interval = poll_interval
        self.on_permanent_failure = on_permanent_failure
        self._ready = ready
        self._bodies = _BodyCache()
        self.keep_sent = keep_sent
        self._last_purge = float("-inf")
        self.max_inflight_bytes = max_inflight_bytes
        self._inflight_bytes = 0
        self._byte_waiters: list[Deferred] = []
        self._wakeup: Deferred | None = None
        self._timer = None
        self._loop: Deferred | None = None
        self._idle_waiters: list[Deferred] = []
        self._pending_wake = False
        self.sent = self.retried = self.failed = 0

    # -- service ---------------------------------------------------------

    def startService(self):
        super().startService()
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(lambda f: log.failure("outbox sender stopped", f))

    def stopService(self):
        super().stopService()
        self.wake()
        d = self._loop if self._loop is not None else defer.succeed(None)
        self._loop = None
        return d

    def wake(self) -> None:
        """New work may be due: stop sleeping."""
        self._pending_wake = True
        if self._wakeup is not None and not self._wakeup.called:
            d, self._wakeup = self._wakeup, None
            d.callback(None)

    def when_idle(self) -> Deferred:
        """Fires the next time the sender finds nothing due."""
        d = Deferred()
        self._idle_waiters.append(d)
        self.wake()
        return d

    # -- loop --------------------------------------------------------------

    async def _run(self):
        if self._ready is not None:
            await self._ready()
        await self.store.listen("outbox", self.wake)
        in_flight: Deferred | None = None
        while self.running:
            self._pending_wake = False
            try:
                now = self.clock.seconds()
                batch = await self.store.run(claim_due, self.store.dialect,
                                             self.node, now, self.batch_size, self.lease)
            except Exception as e:
                log.error("cannot claim deliveries: {error}", error=str(e))
                batch = None
                await self._sleep(min(self.poll_interval, 5.0))
                continue
            if batch:
                previous = in_flight
                in_flight = Deferred.fromCoroutine(self._send_batch(batch))
                in_flight.addErrback(lambda f: log.failure("sending a batch failed", f))
                if previous is not None:
                    await previous
                if len(batch) < self.batch_size:
                    await in_flight
                    in_flight = None
                continue
            if in_flight is not None:
                await in_flight
                in_flight = None
                continue
            await self._purge_if_due()
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)
            if self._pending_wake:
                continue
            await self._sleep(await self._next_due_in())
        if in_flight is not None:
            await in_flight

    async def _purge_if_due(self) -> None:
        """
        Forget sent deliveries (and unused bodies) a day after they went
        out, at most once an hour: the outbox is a queue, not an archive.
        Failed deliveries stay for the operator.
        """
        now = self.clock.seconds()
        if now - self._last_purge < 3600:
            return
        self._last_purge = now
        try:
            await self.store.run(purge_finished, now - self.keep_sent)
        except Exception as e:
            log.error("cannot purge sent deliveries: {error}", error=str(e))

    async def _next_due_in(self) -> float:
        try:
            due = await self.store.run(next_due)
        except Exception:
            return self.poll_interval
        if due is None:
            return self.poll_interval
        return max(0.0, min(self.poll_interval, due - self.clock.seconds()))

    async def _sleep(self, seconds: float) -> None:
        if not self.running or self._pending_wake:
            return
        d = self._wakeup = Deferred()
        timer = self.clock.callLater(seconds, self.wake)
        try:
            await d
        finally:
            if timer.active():
                timer.cancel()

    async def _send_batch(self, batch):
        missing = [d.message_id for d in batch if self._bodies.get(d.message_id) is None]
        if missing:
            for mid, body in (await self.store.run(bodies, missing)).items():
                self._bodies.put(mid, body)
        sends = []
        for delivery in batch:
            body = self._bodies.get(delivery.message_id)
            if body is None:
                # The body vanished (purged by an operator): nothing to send.
                sends.append(defer.succeed({delivery.recipient: (554, "5.3.0 body missing")}))
                continue
            # The shared body object goes to the transport as it is, behind
            # this copy's own header prefix: the pool encodes it once for
            # the whole fan-out instead of once per copy.
            data = (delivery.prefix, body) if delivery.prefix else body
            size = len(delivery.prefix) + len(body)
            # Bound the bytes handed to the transport at once: a 1 MiB
            # message to 10,000 people must not become 10 GiB in memory.
            while self._inflight_bytes and self._inflight_bytes + size > self.max_inflight_bytes:
                waiter = Deferred()
                self._byte_waiters.append(waiter)
                await waiter
            self._inflight_bytes += size
            d = defer.maybeDeferred(self.transport.send, delivery.sender,
                                    [delivery.recipient], data)
            d.addErrback(lambda f, rcpt=delivery.recipient:
                         {rcpt: (451, f"4.3.0 {f.getErrorMessage()}")})
            d.addBoth(self._release, size)
            sends.append(d)
        results = await defer.gatherResults(sends, consumeErrors=True)
        await self._record(batch, results)

    def _release(self, result, size: int):
        self._inflight_bytes -= size
        waiters, self._byte_waiters = self._byte_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        return result

    async def _record(self, batch, results):
        now = self.clock.seconds()
        ok, retry, failed = [], [], []
        for delivery, result in zip(batch, results):
            code, text = result.get(delivery.recipient, (451, "4.3.0 no result"))[:2]
            if 200 <= code < 300:
                ok.append(delivery.id)
            elif 400 <= code < 500 and now - delivery.created < self.give_up:
                delay = min(self.retry_max,
                            self.retry_initial * (2 ** max(0, delivery.attempts - 1)))
                retry.append((delivery, now + delay, code, text))
            else:
                if 400 <= code < 500:
                    text = f"gave up after {delivery.attempts} attempts: {text}"
                failed.append((delivery, code, text))

        hook = self.on_permanent_failure
        # What the hook did, counted only once the transaction committed.
        bounced: list = []

        def record():
            del bounced[:]
            yield from mark_sent(ok, now)
            for delivery, when, code, text in retry:
                yield from mark_retry(delivery.id, when, code, text)
            for delivery, code, text in failed:
                yield from mark_failed(delivery.id, now, code, text)
                if hook is not None and 500 <= code < 600:
                    bounced.append((yield from hook(delivery.recipient, delivery.sender,
                                                    code, text, now)))

        attempt = 0
        while True:
            try:
                await self.store.run(record)
                break
            except Exception as e:
                # The results must not be lost while the database is away:
                # otherwise the lease would expire and they would be re-sent.
                # A restart can outlast any fixed number of attempts, so a
                # temporary failure is retried for as long as we run.
                attempt += 1
                if attempt >= 10 and (not self.running
                                      or not isinstance(e, TemporaryFailure)):
                    log.error("cannot record {n} results ({error}); giving up",
                              n=len(batch), error=str(e))
                    break
                log.error("cannot record {n} results ({error}); retrying",
                          n=len(batch), error=str(e))
                from twisted.internet import task

                await task.deferLater(self.clock, min(30, 2 ** (attempt - 1)), lambda: None)
        self.sent += len(ok)
        self.retried += len(retry)
        self.failed += len(failed)
        metrics.deliveries(sent=len(ok), retried=len(retry), failed=len(failed))
        metrics.bounce_counted(sum(1 for b in bounced if b in ("counted", "unsubscribed")))
        metrics.unsubscribed_by_bounce(bounced.count("unsubscribed"))
        for delivery, when, code, text in retry:
            log.info("delivery to {rcpt} deferred ({code} {text}); next try in {delay:.0f}s",
                     rcpt=delivery.recipient, code=code, text=text, delay=when - now)
        for delivery, code, text in failed:
            log.warn("delivery to {rcpt} failed: {code} {text}",
                     rcpt=delivery.recipient, code=code, text=text)
        if ok:
            log.debug("sent {n} deliveries", n=len(ok))
