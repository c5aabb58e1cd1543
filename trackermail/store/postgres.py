# -*- test-case-name: tests.store.test_store -*-
"""
The PostgreSQL store, through txpostgres.

txpostgres' own C{ConnectionPool} neither reconnects nor health-checks
(see TWISTED-NOTES (e)), so this module keeps a small pool of
C{txpostgres.Connection}s, each with a C{DeadConnectionDetector}: a
connection that dies is re-established in the background while calls fail
fast with L{StoreUnavailable} (a temporary failure: the message waits in
the spool and is retried).
"""

from __future__ import annotations

import psycopg2
import psycopg2.errors
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, txpostgres
from zope.interface import implementer

from trackermail.errors import StoreUnavailable
from trackermail.store.base import StoreBase
from trackermail.store.interface import IStore
from trackermail.store.sql import AsyncTransaction, Prepared

log = Logger()

_RETRYABLE = (psycopg2.errors.SerializationFailure, psycopg2.errors.DeadlockDetected)
_DEAD = (psycopg2.OperationalError, psycopg2.InterfaceError, reconnection.ConnectionDead,
         txpostgres.RollbackFailed)


class _StoppableDetector(reconnection.DeadConnectionDetector):
    """
    txpostgres' detector, with a reconnection loop that L{stop} ends: the
    stock one cannot be stopped, so a store closed during an outage would
    keep retrying and reopen its connections after the close.
    """

    _stopped = False
    _call = None

    def startReconnecting(self, f):
        if self._stopped:
            return
        self._delays = iter(self.reconnectionIterator())
        self._schedule()

    def _schedule(self):
        try:
            delay = next(self._delays)
        except StopIteration:
            return
        self._call = self.reactor.callLater(delay, self._attempt)

    def _attempt(self):
        self._call = None
        if self._stopped:
            return
        d = defer.maybeDeferred(self.reconnect)
        d.addCallbacks(self._reconnected, self._attempt_failed)

    def _reconnected(self, _):
        if self._stopped:
            self._close_quietly()
            return None
        d = self.connectionRecovered()
        d.addErrback(lambda f: log.failure("PostgreSQL recovery handler failed", f))
        return d

    def _attempt_failed(self, failure):
        if not self._stopped:
            self._schedule()

    def _close_quietly(self):
        try:
            self.reconnectable.close()
        except Exception:
            pass

    def stop(self):
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class _Connection(txpostgres.Connection):
    """
    A txpostgres connection that runs store programs in transactions of
    its own making (L{AsyncTransaction}): C{runInteraction} spends a round
    trip on C{BEGIN} alone and one on C{COMMIT} alone, and keeps the
    statements it runs prepared on its server session. It keeps what
    C{runInteraction} is for: the connection's lock and the dead-connection
    detector around the whole transaction.
    """

    #: Whether statements are kept prepared: not behind a pooler that
    #: hands each transaction another server session (PgBouncer's
    #: transaction mode), where they would not be found again.
    prepare = True
    _prepared: Prepared | None = None
    _prepared_on = None

    def runProgram(self, program) -> Deferred:
        return self._doit(self._run_program, program)

    def _run_program(self, program) -> Deferred:
        return Deferred.fromCoroutine(
            AsyncTransaction(self.cursor(), self._statements()).run(program))

    def _statements(self) -> Prepared | None:
        if not self.prepare:
            return None
        # Prepared statements belong to the server session: a reconnection
        # (a new psycopg2 connection under this object) starts with none.
        if self._prepared is None or self._prepared_on is not self._connection:
            self._prepared, self._prepared_on = Prepared(), self._connection
        return self._prepared


def _translate(failure: Failure) -> Failure:
    if failure.check(*_DEAD):
        return Failure(StoreUnavailable(f"PostgreSQL: {failure.getErrorMessage().strip()}"))
    return failure


@implementer(IStore)
class PostgresStore(StoreBase):
    """
    A store in a PostgreSQL database shared by any number of tracker nodes.
    """

    dialect = "postgresql"

    def __init__(self, dsn: str, size: int = 4, reactor=None, prepared_statements: bool = True):
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.dsn = dsn
        self.size = max(1, size)
        self.prepared_statements = prepared_statements
        self._reactor = reactor
        self._idle: list = []
        self._all: list = []
        self._semaphore = defer.DeferredSemaphore(self.size)
        self._listener = None
        self._channels: set[str] = set()
        self._started: Deferred | None = None

    def _connection(self):
        detector = _StoppableDetector(reactor=self._reactor)
        conn = _Connection(reactor=self._reactor, detector=detector)
        conn.prepare = self.prepared_statements
        return conn

    def start(self) -> Deferred:
        if self._started is None:
            self._started = Deferred.fromCoroutine(self._start())
        return self._started

    async def _start(self):
        try:
            for _ in range(self.size):
                conn = self._connection()
                await conn.connect(self.dsn)
                self._all.append(conn)
                self._idle.append(conn)
        except Exception as e:
            for conn in self._all:
                conn.close()
            self._all, self._idle = [], []
            self._started = None
            raise StoreUnavailable(f"PostgreSQL: cannot connect to {self.dsn}: {e}".strip())
        return self

    def close(self) -> Deferred:
        for conn in self._all:
            conn.detector.stop()
            try:
                conn.close()
            except Exception:
                pass
        if self._listener is not None:
            self._listener.detector.stop()
            try:
                self._listener.close()
            except Exception:
                pass
            self._listener = None
        self._all, self._idle = [], []
        self._started = None
        return defer.succeed(None)

    def run(self, program, *args, **kwargs) -> Deferred:
        return Deferred.fromCoroutine(self._run(program, args, kwargs))

    async def _run(self, program, args, kwargs):
        if self._started is None:
            await self.start()
        else:
            await self._started
        for attempt in range(5):
            await self._semaphore.acquire()
            conn = self._idle.pop()
            try:
                return await conn.runProgram(program(*args, **kwargs))
            except _RETRYABLE:
                if attempt == 4:
                    raise
            except _DEAD as e:
                raise StoreUnavailable(f"PostgreSQL: {str(e).strip()}") from e
            finally:
                self._idle.append(conn)
                self._semaphore.release()

    def listen(self, channel: str, callback):
        """
        Also LISTEN on PostgreSQL, on a dedicated connection (a pooled one
        would be handed to other work), so that other nodes' commits wake us.
        """
        StoreBase.listen(self, channel, callback)
        self._channels.add(channel)
        d = Deferred.fromCoroutine(self._listen())

        def failed(f):
            if self._started is not None:  # not closed meanwhile
                log.failure("cannot LISTEN for {channel}", f, channel=channel)

        return d.addErrback(failed)

    async def _listen(self):
        if self._listener is None:
            conn = self._connection()
            self._listener = conn
            conn.addNotifyObserver(self._notified)
            conn.detector.addRecoveryHandler(lambda *a: self._relisten())
            await conn.connect(self.dsn)
        await self._relisten()

    def _relisten(self):
        return Deferred.fromCoroutine(self._do_relisten())

    async def _do_relisten(self):
        for channel in sorted(self._channels):
            await self._listener.runOperation(f'LISTEN "{channel}"')

    def _notified(self, notify) -> None:
        self._notify_listeners(notify.channel)

    def _fire_notes(self, channels) -> None:
        # On PostgreSQL, notifications come back through LISTEN.
        pass
