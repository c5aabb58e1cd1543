# -*- test-case-name: tests.store.test_store -*-
"""
Store programs and the drivers that run them.

Store logic is written once, as generator functions ("programs") that yield
SQL operations and receive their results::

    def subscribers(package):
        rows = yield Rows("SELECT ... WHERE name = ?", (package,))
        return [r[0] for r in rows]

A program runs inside one transaction. The SQLite store drives it
synchronously in adbapi's database thread; the PostgreSQL store drives it
asynchronously over a txpostgres cursor. Programs compose with
C{yield from}. SQL uses C{?} placeholders; the PostgreSQL driver rewrites
them. Programs must not touch the reactor: they may run in a thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Generator, Sequence

Program = Generator["Op", Any, Any]


@dataclass(frozen=True, slots=True)
class Op:
    sql: str
    params: Sequence[Any] = ()


class Rows(Op):
    """Fetch all rows (a list of tuples)."""


class Row(Op):
    """Fetch one row (a tuple) or None."""


class Value(Op):
    """Fetch the first column of the first row, or None."""


class Exec(Op):
    """Run a statement; the result is the row count."""


class Later(Op):
    """
    Run a statement whose result nobody reads (the result is None). The
    PostgreSQL driver sends it in one round trip with the next statement
    that has an answer to wait for, or with the COMMIT; an error in it
    then fails the transaction there. So use it only where any error
    aborts the transaction anyway: a program that catches a database
    error must use L{Exec}.
    """


@dataclass(frozen=True, slots=True)
class Many:
    """
    Run an C{INSERT ... VALUES (?, ...) ...} statement for many rows at once;
    the result is None. PostgreSQL gets multi-row VALUES in chunks (one round
    trip per chunk), SQLite gets C{executemany}.
    """

    sql: str
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Notify:
    """
    Wake listeners of C{channel} once the transaction commits: PostgreSQL
    C{NOTIFY} (every node listening), an in-process signal on SQLite.
    """

    channel: str


_VALUES = re.compile(r"VALUES\s*(\([^()]*\))", re.I)


def _pg_text(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class SyncDriver:
    """
    Runs programs on a DB-API cursor whose methods block (sqlite3).
    """

    def run(self, cursor, program: Program, notes: set | None = None) -> Any:
        try:
            op = next(program)
            while True:
                try:
                    if isinstance(op, Notify):
                        if notes is not None:
                            notes.add(op.channel)
                        result = None
                    else:
                        result = self._execute(cursor, op)
                except Exception as e:
                    op = program.throw(e)
                else:
                    op = program.send(result)
        except StopIteration as stop:
            return stop.value

    def _execute(self, cursor, op):
        if isinstance(op, Many):
            if op.rows:
                cursor.executemany(op.sql, op.rows)
            return None
        cursor.execute(op.sql, tuple(op.params))
        if isinstance(op, Later):
            return None
        if isinstance(op, Rows):
            return cursor.fetchall()
        if isinstance(op, Row):
            return cursor.fetchone()
        if isinstance(op, Value):
            row = cursor.fetchone()
            return None if row is None else row[0]
        return cursor.rowcount


MANY_CHUNK = 1000

#: Queued statement text past which it is sent without waiting for a
#: statement with an answer: a fan-out's deliveries are never held whole.
QUEUE_LIMIT = 1024 * 1024


#: Statements one PostgreSQL connection keeps prepared; past that, new
#: statements are sent in full each time (programs build few distinct texts,
#: but IN (?, ?, ...) lists make one per length).
PREPARED_LIMIT = 500

#: Statements with more parameters are sent in full: they are the
#: IN (?, ?, ...) lists of batches, a different text for every length, which
#: would fill the connection's prepared statements with one-off plans.
PREPARED_PARAMS = 32

_PREPARABLE = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE)\b", re.I)


class Prepared:
    """
    The statements a server connection has prepared, by SQL text. PostgreSQL
    parses and plans a prepared statement once, not at every execution: for
    the tracker's statements that is most of the server's CPU per statement
    (a two-table SELECT: 104 us plain, 28 us prepared).
    """

    def __init__(self):
        self.names: dict[str, str] = {}
        self._serial = 0

    def name_for(self, sql: str) -> tuple[str | None, bool]:
        """
        C{(name, new)}: the prepared name of C{sql}, and whether it must be
        prepared first; C{(None, False)} when it is not to be prepared.
        """
        name = self.names.get(sql)
        if name is not None:
            return name, False
        if (len(self.names) >= PREPARED_LIMIT or sql.count("?") > PREPARED_PARAMS
                or not _PREPARABLE.match(sql)):
            return None, False
        self._serial += 1
        name = self.names[sql] = f"tm_{self._serial}"
        return name, True

    def forget(self) -> None:
        self.names.clear()


def _numbered(sql: str) -> str:
    """C{?} placeholders as PostgreSQL's C{$1}, C{$2}..."""
    parts = sql.split("?")
    out = [parts[0]]
    for i, part in enumerate(parts[1:], 1):
        out.append(f"${i}")
        out.append(part)
    return "".join(out)


_PLAIN_READ = re.compile(r"\s*SELECT\b", re.I)
_LOCKING = re.compile(r"\bFOR\s+(UPDATE|SHARE|NO\s+KEY|KEY)\b", re.I)


def is_plain_read(op) -> bool:
    """
    Whether C{op} only reads (a SELECT that locks nothing): it may run
    before the transaction's C{BEGIN}. At the default isolation level (read
    committed) every statement takes a fresh snapshot anyway, inside a
    transaction or not, so such a read sees the same thing either way.
    """
    return (type(op) in (Rows, Row, Value) and _PLAIN_READ.match(op.sql) is not None
            and _LOCKING.search(op.sql) is None)


class AsyncTransaction:
    """
    Runs a program in one transaction over a txpostgres cursor (whose
    C{execute} returns a Deferred), in as few round trips as its answers
    allow. Statements nobody waits for (C{BEGIN}, L{Later}, L{Many},
    L{Notify}) are queued and sent ahead of the next statement in the same
    query text: PostgreSQL runs them in order and answers with the last
    one's result. The C{COMMIT} carries whatever is still queued, and the
    notifications once per channel (PostgreSQL folds duplicates anyway).
    C{BEGIN} waits for the first statement that writes or locks (see
    L{is_plain_read}): a program that only reads needs neither it nor a
    C{COMMIT}, and reading one stored body is one round trip, not two.

    Parameters are bound by psycopg2 on the client (C{mogrify}), as its
    C{execute} does, so a queued text is exactly what would have been sent.
    """

    def __init__(self, cursor, prepared: Prepared | None = None):
        self.cursor = cursor
        self.prepared = prepared
        self._queued: list[bytes] = []
        self._queued_bytes = 0
        self._channels: list[str] = []
        self._preparing = False
        #: BEGIN is queued or sent: every later statement is in the transaction.
        self._begun = False
        #: BEGIN reached the server: a failure needs a ROLLBACK.
        self.started = False

    async def run(self, program: Program) -> Any:
        """Run C{program}, commit, and return its result; roll back on any error."""
        try:
            result = await self._drive(program)
            await self._commit()
        except BaseException:
            await self._rollback()
            raise
        return result

    async def _drive(self, program: Program) -> Any:
        try:
            op = next(program)
            while True:
                try:
                    result = await self._execute(op)
                except Exception as e:
                    op = program.throw(e)
                else:
                    op = program.send(result)
        except StopIteration as stop:
            return stop.value

    def _bind(self, sql: str, params: Sequence[Any]) -> bytes:
        if self.prepared is not None:
            name, new = self.prepared.name_for(sql)
            if name is not None:
                if new:
                    self._preparing = True
                    self._queue(f"PREPARE {name} AS {_numbered(sql)}".encode())
                if not params:
                    return f"EXECUTE {name}".encode()
                placeholders = ", ".join(["%s"] * len(params))
                return self.cursor.mogrify(f"EXECUTE {name} ({placeholders})", tuple(params))
        return self.cursor.mogrify(_pg_text(sql), tuple(params))

    def _queue(self, text: bytes) -> None:
        self._queued.append(text)
        self._queued_bytes += len(text)

    def _begin(self) -> None:
        if not self._begun:
            self._begun = True
            self._queue(b"BEGIN")

    async def _send(self, text: bytes | None) -> None:
        parts = self._queued + ([text] if text is not None else [])
        self._queued, self._queued_bytes = [], 0
        if parts:
            self.started = self._begun
            await self.cursor.execute(b"; ".join(parts))

    async def _execute(self, op) -> Any:
        if isinstance(op, Notify):
            if op.channel not in self._channels:
                self._channels.append(op.channel)
            return None
        if isinstance(op, Many):
            self._begin()
            await self._queue_many(op)
        elif isinstance(op, Later):
            text = self._bind(op.sql, op.params)
            self._begin()
            self._queue(text)
        else:
            text = self._bind(op.sql, op.params)
            if not is_plain_read(op):
                self._begin()
            await self._send(text)
            return _result(self.cursor, op)
        if self._queued_bytes >= QUEUE_LIMIT:
            await self._send(None)
        return None

    async def _queue_many(self, op: Many) -> None:
        match = _VALUES.search(op.sql)
        if match is None:
            raise ValueError(f"Many() needs a VALUES (?, ...) clause: {op.sql!r}")
        group = _pg_text(match.group(1))
        head = _pg_text(op.sql[: match.start()])
        tail = _pg_text(op.sql[match.end():])
        rows = list(op.rows)
        for start in range(0, len(rows), MANY_CHUNK):
            chunk = rows[start: start + MANY_CHUNK]
            params = [v for row in chunk for v in row]
            sql = head + "VALUES " + ",".join([group] * len(chunk)) + tail
            self._queue(self.cursor.mogrify(sql, params))
            if self._queued_bytes >= QUEUE_LIMIT:
                await self._send(None)

    async def _commit(self) -> None:
        if self._channels:
            self._begin()
        for channel in self._channels:
            self._queue(self.cursor.mogrify("SELECT pg_notify(%s, '')", (channel,)))
        if self._begun:
            self._queue(b"COMMIT")
        await self._send(None)

    async def _rollback(self) -> None:
        self._queued, self._queued_bytes = [], 0
        if self._preparing and self.prepared is not None:
            # A PREPARE queued behind the failed statement never ran; one
            # that ran outlives the rollback. Start again from none.
            self.prepared.forget()
            if self.started:
                await self.cursor.execute("ROLLBACK; DEALLOCATE ALL")
            return
        if self.started:
            # Failing here leaves the connection in an unknown state: the
            # caller treats it as dead.
            await self.cursor.execute("ROLLBACK")


def _result(cursor, op) -> Any:
    if isinstance(op, Rows):
        return cursor.fetchall()
    if isinstance(op, Row):
        return cursor.fetchone()
    if isinstance(op, Value):
        row = cursor.fetchone()
        return None if row is None else row[0]
    return cursor.rowcount
