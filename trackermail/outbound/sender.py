# -*- test-case-name: tests.outbound.test_sender -*-
"""
The outbox sender: claims due deliveries in batches, sends each through an
L{IOutboundTransport} (the SMTP connection pool), and records its result.

- Claims are leases of C{lease} seconds (default 30), renewed every
  C{lease / 3} while the node runs; a node releases its own claims when it
  starts (its name, C{[tracker] node}, is stable across restarts), so a
  restarted node sends again at once and another node takes over a dead
  node's deliveries when their lease runs out. The sender sleeps until the
  next retry is due, another node's earliest lease ends, the store notifies
  C{outbox} (PostgreSQL LISTEN/NOTIFY, an in-process signal on SQLite), or
  C{poll_interval} passes.
- A body is read from the store when a delivery is about to be sent (see
  L{trackermail.outbound.bodies}); the bytes of bodies in memory stay within
  C{max_inflight_bytes}.
- Results are recorded as they arrive, in group commits (see
  L{trackermail.outbound.recorder}; every C{flush_interval} = 0.1 s or
  C{flush_size} = 500 results, at once when nothing else is in flight): a
  SIGKILL re-sends at most what was in flight and the last 0.1 s of results.
- What a reply means is decided by L{trackermail.outbound.smarthost}: 2xx
  sent; 4xx (and the smarthost's own refusals) retried with exponential
  backoff (C{retry_initial} doubling up to C{retry_max}) until
  C{give_up_days} after the delivery was queued, then failed; a permanent
  refusal of the message fails the delivery; only a permanent RCPT refusal
  goes through C{on_permanent_failure} (the bounce policy, a store program
  C{hook(recipient, sender, code, text, now)}) in the same transaction.
"""

from __future__ import annotations

import socket
from typing import Any, Optional

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from trackermail import metrics
from trackermail.outbound.bodies import CLOSED, NOT_READY, BodyCache
from trackermail.outbound.interface import LOCAL, Reply
from trackermail.outbound.recorder import Recorder
from trackermail.outbound.smarthost import (
    BOUNCE,
    DEFER,
    FAIL,
    HOLD,
    RETRY,
    SENT,
    SmarthostWatch,
)
from trackermail.store.outbox import (
    Delivery,
    Result,
    claim_due,
    next_wakeup,
    purge_finished,
    read_body,
    read_small_bodies,
    release_claims,
    renew_claims,
)

log = Logger()

#: Bodies up to this size are read together for a batch (one chunk each
#: in the store, which cuts at 1 MiB); larger ones one at a time.
PREFETCH_SIZE = 256 * 1024

NO_RESULT = Reply(451, "4.3.0 the transport gave no result for this recipient", LOCAL)
BODY_MISSING = Reply(554, "5.3.0 the message body is missing from the outbox"
                          " (deleted by hand?); not sent", LOCAL)


class OutboxSender(service.Service):
    name = "outbound"

    def __init__(self, store, transport, clock=None, *, node: str | None = None,
                 batch_size: int = 500, lease: float = 30.0,
                 retry_initial: float = 60.0, retry_max: float = 3600.0,
                 give_up_days: float = 5.0, poll_interval: float = 30.0,
                 on_permanent_failure=None, ready=None,
                 max_inflight_bytes: int = 32 * 1024 * 1024,
                 keep_sent: float = 86400.0, flush_interval: float = 0.1,
                 flush_size: int = 500, rcpt_hold: float = 10.0,
                 peer: str = "smarthost"):
        if clock is None:
            from twisted.internet import reactor as clock
        self.store = store
        self.transport = transport
        self.clock = clock
        self.node = node or socket.gethostname()
        self.batch_size = batch_size
        self.lease = lease
        self._cursor: tuple[float, int] | None = None
        self._took_over_at = float("-inf")
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.give_up = give_up_days * 86400
        self.poll_interval = poll_interval
        self.on_permanent_failure = on_permanent_failure
        self._ready = ready
        self.keep_sent = keep_sent
        self._last_purge = float("-inf")
        self.bodies = BodyCache(lambda mid: self.store.run(read_body, mid), max_inflight_bytes,
                                lambda mids: self.store.run(read_small_bodies, mids))
        self.watch = SmarthostWatch(clock, self._held_judged, peer=peer, hold_time=rcpt_hold)
        self.recorder = Recorder(store, self.node, clock, on_permanent_failure,
                                 more_coming=self._more_coming, on_recorded=self._recorded,
                                 interval=flush_interval, size=flush_size)
        # Claimed and not yet recorded, by delivery id.
        self._claimed: dict[int, Delivery] = {}
        # Handed to the transport and not yet answered.
        self._in_flight = 0
        self._drained: Deferred | None = None
        # Batches still handing deliveries to the transport.
        self._batches: list[Deferred] = []
        self._wakeup: Deferred | None = None
        self._progress: Deferred | None = None
        self._renewal: task.LoopingCall | None = None
        self._loop: Deferred | None = None
        self._stopping: Deferred = Deferred()
        self._idle_waiters: list[Deferred] = []
        self._pending_wake = False
        self.sent = self.retried = self.failed = 0

    # -- service ---------------------------------------------------------

    @property
    def max_inflight_bytes(self) -> int:
        return self.bodies.budget

    @max_inflight_bytes.setter
    def max_inflight_bytes(self, value: int) -> None:
        self.bodies.budget = value

    def startService(self):
        super().startService()
        self.bodies.open()
        self.recorder.running = True
        self._stopping = Deferred()
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(lambda f: log.failure("outbox sender stopped", f))

    def stopService(self):
        super().stopService()
        self.bodies.close()
        if not self._stopping.called:
            self._stopping.callback(None)
        self.wake()
        d = self._loop if self._loop is not None else defer.succeed(None)
        self._loop = None
        return d

    def wake(self) -> None:
        """New work may be due: stop sleeping."""
        self._pending_wake = True
        for name in ("_wakeup", "_progress"):
            d = getattr(self, name)
            if d is not None and not d.called:
                setattr(self, name, None)
                d.callback(None)

    def when_idle(self) -> Deferred:
        """Fires the next time the sender finds nothing due and nothing in flight."""
        d = Deferred()
        self._idle_waiters.append(d)
        self.wake()
        return d

    # -- loop --------------------------------------------------------------

    async def _run(self):
        if self._ready is not None:
            # The store may never become ready: a stop must still end this.
            await defer.DeferredList([self._ready(), self._stopping], fireOnOneCallback=True,
                                     consumeErrors=True)
        if not await self._release_own_claims():
            return
        await self.store.listen("outbox", self.wake)
        self._renewal = task.LoopingCall(self._renew)
        self._renewal.clock = self.clock
        self._renewal.start(self.lease / 3, now=False)
        try:
            while self.running:
                await self._step()
        finally:
            await self._shutdown()

    async def _step(self) -> None:
        self._pending_wake = False
        if len(self._claimed) >= self.batch_size:
            await self._wait_for_progress()
            return
        now = self.clock.seconds()
        # During a long drain, other nodes' expired leases are looked for
        # every lease / 3, not at every claim: the scan of what is in flight
        # is not free. Otherwise at every claim.
        take_over = self._cursor is None or now - self._took_over_at >= self.lease / 3
        try:
            batch = await self.store.run(claim_due, self.store.dialect, self.node,
                                         now, self.batch_size, self.lease,
                                         after=self._cursor, take_over=take_over)
        except Exception as e:
            log.error("cannot claim deliveries: {error}", error=str(e))
            self._cursor = None
            await self._sleep(min(self.poll_interval, 5.0))
            return
        if take_over:
            self._took_over_at = now
        # A full batch: the next claim goes on past it. A short one: the
        # queue is drained as far as it was due, and the next claim starts
        # from the beginning again (so a copy put back in the queue with an
        # earlier due time is not missed).
        self._cursor = (max((d.due, d.id) for d in batch)
                        if len(batch) == self.batch_size else None)
        if batch:
            for delivery in batch:
                self._claimed[delivery.id] = delivery
            d = Deferred()
            self._batches.append(d)
            sending = Deferred.fromCoroutine(self._send_batch(batch))
            sending.addErrback(lambda f: log.failure("sending a batch failed", f))
            sending.addBoth(lambda _: self._batch_sent(d))
            return
        if self._claimed:
            await self._wait_for_progress(everything=True)
            return
        await self._purge_if_due()
        if self._claimed or self._pending_wake:
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for d in waiters:
            d.callback(None)
        if self._pending_wake:
            return
        await self._sleep(await self._next_wakeup_in())

    async def _release_own_claims(self) -> bool:
        """
        A node that starts has nothing in flight: what the store says it is
        sending was claimed by its previous life, and is due again now.
        """
        while self.running:
            try:
                n = await self.store.run(release_claims, self.node)
            except Exception as e:
                log.error("cannot release the claims of {node}: {error}; retrying",
                          node=self.node, error=str(e))
                self._pending_wake = False
                await self._sleep(5.0)
                continue
            if n:
                log.info("released {n} deliveries {node} was sending before it stopped",
                         n=n, node=self.node)
            return True
        return False

    async def _shutdown(self) -> None:
        self.bodies.close()
        while self._batches:
            await defer.DeferredList(list(self._batches))
        if self._in_flight:
            # Sends the smarthost is answering: their results must be recorded.
            self._drained = Deferred()
            await self._drained
        self.watch.release_all(RETRY)
        self.watch.stop()
        self.recorder.stop()
        await self.recorder.when_flushed()
        if self._renewal is not None and self._renewal.running:
            self._renewal.stop()
        waiters, self._idle_waiters = self._idle_waiters, []
        for d in waiters:
            d.callback(None)

    def _renew(self) -> None:
        if not self._claimed:
            return
        # Runs every lease / 3: a lease ending after the next run but one is
        # safe until then, so only older claims are written.
        now = self.clock.seconds()
        d = self.store.run(renew_claims, self.node, now + self.lease,
                           now + 2 * self.lease / 3)
        d.addErrback(lambda f: log.error("cannot renew the leases of {node}: {error}",
                                         node=self.node, error=f.getErrorMessage()))

    async def _wait_for_progress(self, everything: bool = False) -> None:
        """Until a result is recorded (or all are, with C{everything}), or a wake."""
        while self.running and not self._pending_wake and self._claimed:
            d = self._progress = Deferred()
            await d
            if not everything:
                return

    async def _purge_if_due(self) -> None:
        """
        Forget messages (bodies, counts of copies sent) a day after their
        last copy went out, at most once an hour: the outbox is a queue, not
        an archive. A sent copy's delivery is gone already; failed ones
        stay for the operator.
        """
        now = self.clock.seconds()
        if now - self._last_purge < 3600:
            return
        self._last_purge = now
        try:
            await self.store.run(purge_finished, now - self.keep_sent)
        except Exception as e:
            log.error("cannot purge sent messages: {error}", error=str(e))

    async def _next_wakeup_in(self) -> float:
        try:
            when = await self.store.run(next_wakeup, self.node)
        except Exception:
            return self.poll_interval
        if when is None:
            return self.poll_interval
        delay = when - self.clock.seconds()
        if delay <= 0:
            # Due, but nothing could be claimed: another node is claiming
            # it right now, or its lease is being renewed. Look again soon.
            delay = 1.0
        return min(self.poll_interval, delay)

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

    # -- sending -----------------------------------------------------------

    async def _send_batch(self, batch: list[Delivery]) -> None:
        bodies = self.bodies
        await bodies.prefetch([(d.message_id, d.size) for d in batch
                               if d.size <= PREFETCH_SIZE])
        for i, delivery in enumerate(batch):
            if not self.running:
                # Stopping: what was not handed over yet goes back to the queue.
                for rest in batch[i:]:
                    self.recorder.add(Result(rest, "released"))
                return
            mid = delivery.message_id
            parts = bodies.acquire_now(mid)
            if parts is NOT_READY:
                try:
                    parts = await bodies.acquire(mid, delivery.size)
                except Exception as e:
                    self._finish(delivery, Reply(451, "4.3.0 cannot read the message from the"
                                                 " outbox: {}".format(e), LOCAL))
                    continue
                if parts is CLOSED:
                    for rest in batch[i:]:
                        self.recorder.add(Result(rest, "released"))
                    return
            if parts is None:
                bodies.release(mid)
                self._finish(delivery, BODY_MISSING)
                continue
            # The shared chunks go to the transport as they are, behind
            # this copy's own header prefix: the pool encodes them once for
            # the whole fan-out instead of once per copy.
            data = (delivery.prefix, *parts) if delivery.prefix else parts
            self._in_flight += 1
            d = defer.maybeDeferred(self.transport.send, delivery.sender,
                                    [delivery.recipient], data)
            d.addCallbacks(self._answered, self._broken_transport,
                           callbackArgs=(delivery,), errbackArgs=(delivery,))

    def _batch_sent(self, d: Deferred) -> None:
        self._batches.remove(d)
        d.callback(None)
        if not self._more_coming():
            self.recorder.flush()

    def _answered(self, results: dict, delivery: Delivery) -> None:
        self._in_flight -= 1
        self.bodies.release(delivery.message_id)
        reply = results.get(delivery.recipient, NO_RESULT) if isinstance(results, dict) \
            else NO_RESULT
        if not isinstance(reply, Reply):
            code, text = reply[:2]
            reply = Reply(code, text, LOCAL)
        self._finish(delivery, reply)
        if not self._in_flight and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def _broken_transport(self, failure, delivery: Delivery) -> None:
        # A transport must answer every recipient; a failed send is its
        # bug, taken as a temporary failure of this copy.
        log.error("the outbound transport failed a send to {rcpt}: {error}",
                  rcpt=delivery.recipient, error=failure.getErrorMessage())
        self._answered({delivery.recipient: Reply(
            451, "4.3.0 {}".format(failure.getErrorMessage()), LOCAL)}, delivery)

    def _finish(self, delivery: Delivery, reply: Reply) -> None:
        try:
            verdict = self.watch.judge(delivery, reply)
            if verdict != HOLD:
                self._judged(delivery, reply, verdict)
        except Exception:
            log.failure("cannot judge the reply {code} {text} for {rcpt}", code=reply.code,
                        text=reply.text, rcpt=delivery.recipient)
            self.recorder.add(Result(delivery, "released"))

    def _held_judged(self, delivery: Delivery, reply: Reply, verdict: str) -> None:
        self._judged(delivery, reply, verdict)

    def _judged(self, delivery: Delivery, reply: Reply, verdict: str) -> None:
        now = self.clock.seconds()
        code, text, _ = reply
        if verdict == SENT:
            result = Result(delivery, "sent", code)
        elif verdict in (RETRY, DEFER):
            if now - delivery.created < self.give_up:
                delay = min(self.retry_max,
                            self.retry_initial * (2 ** max(0, delivery.attempts - 1)))
                result = Result(delivery, "queued", code, text, now + delay)
            else:
                result = Result(delivery, "failed", code,
                                f"gave up after {delivery.attempts} attempts: {text}")
        else:
            result = Result(delivery, "failed", code, text, bounce=verdict == BOUNCE)
            if verdict not in (FAIL, BOUNCE):  # pragma: no cover - defensive
                log.error("unknown verdict {verdict}", verdict=verdict)
        self.recorder.add(result)

    def _more_coming(self) -> bool:
        return self._in_flight > 0 or bool(self._batches)

    def _recorded(self, results: list[Result], recorded: Optional[Any]) -> None:
        for r in results:
            self._claimed.pop(r.delivery.id, None)
        d, self._progress = self._progress, None
        if d is not None and not d.called:
            d.callback(None)
        if recorded is None:
            return
        self.sent += recorded.sent
        self.retried += recorded.retried
        self.failed += recorded.failed
        metrics.deliveries(sent=recorded.sent, retried=recorded.retried, failed=recorded.failed)
        bounced = recorded.bounced
        metrics.bounce_counted(sum(1 for b in bounced if b in ("counted", "unsubscribed")))
        metrics.unsubscribed_by_bounce(bounced.count("unsubscribed"))
        metrics.bounce_results(bounced)
        if recorded.lost:
            log.warn("{n} results were not recorded: another node had taken over their"
                     " deliveries after {node}'s lease ran out", n=recorded.lost,
                     node=self.node)
        now = self.clock.seconds()
        sent: dict[str, int] = {}
        for r in results:
            if r.state == "sent":
                sent[r.delivery.origin] = sent.get(r.delivery.origin, 0) + 1
            elif r.state == "queued" and self.watch.refusing is None:
                log.info("delivery of {queue_id} to {rcpt} deferred ({code} {text}); next try"
                         " in {delay:.0f}s", queue_id=r.delivery.origin,
                         rcpt=r.delivery.recipient, code=r.code, text=r.text,
                         delay=r.next_attempt - now)
            elif r.state == "failed":
                log.warn("delivery of {queue_id} to {rcpt} failed: {code} {text}",
                         queue_id=r.delivery.origin, rcpt=r.delivery.recipient,
                         code=r.code, text=r.text)
        for origin, n in sorted(sent.items()):
            # One line per message and commit, not per copy: a fan-out to
            # 10,000 people logs a handful of lines, each with the queue id.
            log.info("sent {n} copies of {queue_id}", n=n, queue_id=origin)
