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
        if isinstance(op, Rows):
            return cursor.fetchall()
        if isinstance(op, Row):
            return cursor.fetchone()
        if isinstance(op, Value):
            row = cursor.fetchone()
            return None if row is None else row[0]
        return cursor.rowcount


MANY_CHUNK = 1000


async def run_async(cursor, program: Program) -> Any:
    """
    Run a program over a txpostgres cursor (C{execute} returns a Deferred).
    """
    try:
        op = next(program)
        while True:
            try:
                result = await _execute_async(cursor, op)
            except Exception as e:
                op = program.throw(e)
            else:
                op = program.send(result)
    except StopIteration as stop:
        return stop.value


async def _execute_async(cursor, op):
    if isinstance(op, Notify):
        await cursor.execute("SELECT pg_notify(%s, '')", (op.channel,))
        return None
    if isinstance(op, Many):
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
            await cursor.execute(sql, params)
        return None
    await cursor.execute(_pg_text(op.sql), tuple(op.params))
    if isinstance(op, Rows):
        return cursor.fetchall()
    if isinstance(op, Row):
        return cursor.fetchone()
    if isinstance(op, Value):
        row = cursor.fetchone()
        return None if row is None else row[0]
    return cursor.rowcount
