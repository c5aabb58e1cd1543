# -*- test-case-name: tests.store.test_store -*-
"""
The embedded default store: SQLite through C{twisted.enterprise.adbapi}.

One connection and one database thread (SQLite has one writer anyway), WAL,
and explicit C{BEGIN IMMEDIATE} transactions so that a program's reads and
writes are one unit even when another process (the admin CLI) shares the
file.
"""

from __future__ import annotations

import os
import sqlite3
from urllib.parse import quote

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from trackermail.errors import StoreUnavailable
from trackermail.store.base import StoreBase
from trackermail.store.interface import IStore
from trackermail.store.sql import SyncDriver


def _setup(conn: sqlite3.Connection, memory: bool = False, readonly: bool = False) -> None:
    conn.isolation_level = None  # we issue BEGIN/COMMIT ourselves
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 10000")
    if not memory and not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL is durable against process crashes; a power cut may
        # lose the last commits but never corrupts. Mail is safe anyway: the
        # spool file is only removed after the commit.
        conn.execute("PRAGMA synchronous = FULL")


_driver = SyncDriver()


def _setup_readonly(conn: sqlite3.Connection) -> None:
    _setup(conn, readonly=True)


def _transaction(conn, program, args, kwargs, notes, begin="BEGIN IMMEDIATE"):
    cursor = conn.cursor()
    cursor.execute(begin)
    try:
        result = _driver.run(cursor, program(*args, **kwargs), notes)
    except BaseException:
        cursor.execute("ROLLBACK")
        raise
    cursor.execute("COMMIT")
    return result


def _translate(failure: Failure) -> Failure:
    if failure.check(sqlite3.OperationalError):
        text = str(failure.value)
        if "locked" in text or "unable to open" in text or "disk" in text:
            return Failure(StoreUnavailable(f"SQLite: {text}"))
    return failure


@implementer(IStore)
class SQLiteStore(StoreBase):
    """
    A store in an SQLite file, driven from adbapi's single database thread.
    """

    dialect = "sqlite"

    def __init__(self, path: str, reactor=None, readonly: bool = False):
        """
        @param readonly: open an existing file read-only (C{mode=ro}): the
            store creates neither the file nor its directory, and any write
            fails. For commands that only look.
        """
        self.path = path
        self.readonly = readonly
        self._reactor = reactor
        self._pool = None

    def start(self) -> defer.Deferred:
        if self._pool is None:
            kwargs = {}
            if self._reactor is not None:
                kwargs["cp_reactor"] = self._reactor
            if self.readonly:
                if not os.path.isfile(self.path):
                    return defer.fail(StoreUnavailable(f"no database at {self.path}"))
                target = "file:" + quote(os.path.abspath(self.path)) + "?mode=ro"
                kwargs.update(uri=True, cp_openfun=_setup_readonly)
            else:
                directory = os.path.dirname(os.path.abspath(self.path))
                os.makedirs(directory, exist_ok=True)
                target = self.path
                kwargs["cp_openfun"] = _setup
            self._pool = adbapi.ConnectionPool(
                "sqlite3",
                target,
                cp_min=1,
                cp_max=1,
                check_same_thread=False,
                **kwargs,
            )
            if not self._pool.running:
                self._pool.start()
        return defer.succeed(self)

    def close(self) -> defer.Deferred:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        return defer.succeed(None)

    def run(self, program, *args, **kwargs) -> defer.Deferred:
        if self._pool is None:
            self.start()
        notes: set = set()
        # A read-only connection cannot take the write lock of BEGIN IMMEDIATE.
        begin = "BEGIN" if self.readonly else "BEGIN IMMEDIATE"
        d = self._pool.runWithConnection(
            lambda conn: _transaction(conn, program, args, kwargs, notes, begin)
        )

        def notify(result):
            self._fire_notes(notes)
            return result

        return d.addCallbacks(notify, _translate)


@implementer(IStore)
class MemoryStore(StoreBase):
    """
    An in-memory SQLite store that runs programs synchronously in the
    caller's thread: its Deferreds have already fired, which makes it the
    store of choice for L{SynchronousTestCase}s. Same schema and programs as
    the real stores.
    """

    dialect = "sqlite"

    def __init__(self, path: str = ":memory:"):
        self._conn = sqlite3.connect(path, check_same_thread=False)
        _setup(self._conn, memory=True)

    def start(self) -> defer.Deferred:
        return defer.succeed(self)

    def close(self) -> defer.Deferred:
        self._conn.close()
        return defer.succeed(None)

    def run(self, program, *args, **kwargs) -> defer.Deferred:
        notes: set = set()
        try:
            result = _transaction(self._conn, program, args, kwargs, notes)
        except BaseException:
            return defer.fail(_translate(Failure()))
        self._fire_notes(notes)
        return defer.succeed(result)
