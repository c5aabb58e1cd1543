# -*- test-case-name: tests.outbound.test_recorder -*-
"""
Group commits of delivery results.

The sender hands each result over as it arrives; they are recorded together
in one store transaction (L{record_results}: the sent ones' deliveries
deleted by one statement, their messages' counts raised by another) when
C{size} results are waiting, C{interval} seconds after the first one, or
at once when no other delivery is in flight. So a SIGKILL re-sends
at most the deliveries in flight and the results of the last C{interval}.

While a commit runs, new results wait for the next one. A commit that fails
is tried again with backoff (0.1 s doubling up to 30 s) for as long as the
sender runs: the results of copies the smarthost already took must not be
lost, or they would be sent again once their lease runs out. A commit that
keeps failing for another reason than an unavailable store is retried a
result at a time, and a result that cannot be recorded even without the
bounce policy is given up (logged): its claim is released when the node
starts again.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from trackermail.errors import TemporaryFailure
from trackermail.store.outbox import Recorded, Result, record_results

log = Logger()

MAX_BACKOFF = 30.0


class Recorder:
    """
    @param more_coming: C{more_coming()} says whether results are still
        expected soon (deliveries in flight); when not, a result is
        recorded at once.
    @param on_recorded: C{on_recorded(results, recorded)} after a commit
        (C{recorded} is a L{Recorded}), or with C{None} for results given up.
    """

    def __init__(self, store: Any, node: str, clock: Any, hook: Optional[Callable],
                 more_coming: Callable[[], bool], on_recorded: Callable,
                 interval: float = 0.1, size: int = 500):
        self.store = store
        self.node = node
        self.clock = clock
        self.hook = hook
        self.more_coming = more_coming
        self.on_recorded = on_recorded
        self.interval = interval
        self.size = size
        # While False (the sender is stopping), failing commits are not
        # retried for ever.
        self.running = True
        self.commits = 0
        self._pending: list[Result] = []
        self._timer = None
        self._flushing = False
        self._waiters: list[Deferred] = []

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, result: Result) -> None:
        self._pending.append(result)
        if self._flushing:
            return
        if len(self._pending) >= self.size or not self.more_coming():
            self.flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(self.interval, self.flush)

    def flush(self) -> None:
        """Record what is waiting now (unless a commit is running: it will)."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self._flushing or not self._pending:
            return
        self._flushing = True
        d = Deferred.fromCoroutine(self._flush())
        d.addErrback(lambda f: log.failure("recording delivery results failed", f))

    def when_flushed(self) -> Deferred:
        """Fires once nothing waits to be recorded (flushing what waits now)."""
        d: Deferred = Deferred()
        if not self._pending and not self._flushing:
            d.callback(None)
            return d
        self._waiters.append(d)
        self.flush()
        return d

    async def _flush(self) -> None:
        try:
            attempt = 0
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    recorded = await self._commit(batch)
                except Exception as e:
                    self._pending[:0] = batch
                    attempt += 1
                    if not await self._after_failure(batch, e, attempt):
                        attempt = 0
                    continue
                attempt = 0
                self.on_recorded(batch, recorded)
        finally:
            self._flushing = False
            if not self._pending:
                waiters, self._waiters = self._waiters, []
                for d in waiters:
                    d.callback(None)

    def _commit(self, batch: list[Result]) -> Deferred:
        self.commits += 1
        return self.store.run(record_results, self.node, self.clock.seconds(), batch, self.hook)

    async def _after_failure(self, batch: list[Result], error: Exception, attempt: int) -> bool:
        """
        Decide what to do after a failed commit; False when the batch was
        dealt with another way (retried result by result, or given up).
        """
        temporary = isinstance(error, TemporaryFailure)
        if not self.running and attempt >= 10:
            log.error("cannot record {n} delivery results ({error}) while stopping; giving up:"
                      " they are sent again after the next start", n=len(batch),
                      error=str(error))
            self._take(batch)
            self.on_recorded(batch, None)
            return False
        if not temporary and attempt >= 3:
            self._take(batch)
            await self._one_by_one(batch)
            return False
        log.error("cannot record {n} delivery results ({error}); retrying", n=len(batch),
                  error=str(error))
        await task.deferLater(self.clock, min(MAX_BACKOFF, 0.1 * 2 ** (attempt - 1)),
                              lambda: None)
        return True

    def _take(self, batch: list[Result]) -> None:
        ids = {id(r) for r in batch}
        self._pending = [r for r in self._pending if id(r) not in ids]

    async def _one_by_one(self, batch: list[Result]) -> None:
        for result in batch:
            attempts = [result]
            if result.bounce:
                attempts.append(Result(result.delivery, result.state, result.code,
                                       result.text, result.next_attempt, bounce=False))
            for candidate in attempts:
                try:
                    recorded = await self._commit([candidate])
                except Exception as e:
                    log.error("cannot record the result of delivery {id} to {rcpt}"
                              " ({error})", id=result.delivery.id,
                              rcpt=result.delivery.recipient, error=str(e))
                    continue
                self.on_recorded([candidate], recorded)
                break
            else:
                self.on_recorded([result], None)

    def stop(self) -> None:
        self.running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


__all__ = ["Recorder", "Recorded", "Result"]
