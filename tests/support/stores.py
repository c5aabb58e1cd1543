"""
Stores for tests: an in-memory SQLite store, a temporary SQLite file, and a
fresh PostgreSQL database per test run.

The PostgreSQL DSN comes from C{TRACKERMAIL_TEST_PG} (default
C{postgresql:///test}); the tests create a database of their own next to it
and drop it at exit. When PostgreSQL is unreachable the PostgreSQL variants
skip with the reason, except under C{TRACKERMAIL_TEST_PG_REQUIRED=1} (CI),
where they fail.
"""

from __future__ import annotations

import atexit
import os
import secrets
from urllib.parse import urlsplit

from twisted.trial.unittest import SkipTest

from trackermail.store.sqlite import MemoryStore, SQLiteStore

_pg_state: dict = {}


def _admin_dsn() -> str:
    return os.environ.get("TRACKERMAIL_TEST_PG", "postgresql:///test")


def _with_dbname(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    # urlunsplit drops the empty authority of postgresql:///db (a UNIX socket).
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{parts.netloc}/{name}{query}"


def pg_required() -> bool:
    return os.environ.get("TRACKERMAIL_TEST_PG_REQUIRED") == "1"


def test_database_dsn() -> str:
    """
    The DSN of this test run's own PostgreSQL database, created on first use
    and dropped at exit. Raises SkipTest (or a failure under
    TRACKERMAIL_TEST_PG_REQUIRED=1) when PostgreSQL cannot be reached.
    """
    if "dsn" in _pg_state:
        return _pg_state["dsn"]
    if "error" in _pg_state:
        _unavailable(_pg_state["error"])
    import psycopg2

    admin = _admin_dsn()
    name = f"trackermail_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        conn = psycopg2.connect(admin, connect_timeout=5)
    except Exception as e:
        _pg_state["error"] = f"PostgreSQL unreachable at {admin}: {e}".strip()
        _unavailable(_pg_state["error"])
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()

    def drop():
        try:
            c = psycopg2.connect(admin, connect_timeout=5)
            c.autocommit = True
            with c.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            c.close()
        except Exception:
            pass

    atexit.register(drop)
    _pg_state["dsn"] = _with_dbname(admin, name)
    return _pg_state["dsn"]


def _unavailable(reason: str):
    if pg_required():
        raise AssertionError(
            f"TRACKERMAIL_TEST_PG_REQUIRED=1 but {reason}"
        )
    raise SkipTest(f"SKIPPING PostgreSQL tests: {reason}")


def reset_pg_schema(dsn: str) -> None:
    """Drop everything in the test database (synchronously, before a test)."""
    import psycopg2

    conn = psycopg2.connect(dsn, connect_timeout=5)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    conn.close()


async def make_pg_store(testcase, size: int = 2, migrate: bool = True):
    """A started, migrated (unless told not to), empty PostgreSQL store closed at cleanup."""
    from trackermail.store.postgres import PostgresStore

    dsn = test_database_dsn()
    reset_pg_schema(dsn)
    store = PostgresStore(dsn, size=size)
    testcase.addCleanup(store.close)
    await store.start()
    if migrate:
        await store.migrate()
    return store


async def make_sqlite_store(testcase, migrate: bool = True):
    path = os.path.join(testcase.mktemp() + ".d", "tracker.sqlite")
    store = SQLiteStore(path)
    testcase.addCleanup(store.close)
    await store.start()
    if migrate:
        await store.migrate()
    return store


def make_memory_store(testcase=None) -> MemoryStore:
    """A migrated in-memory store whose Deferreds fire at once."""
    store = MemoryStore()
    store.migrate()
    if testcase is not None:
        testcase.addCleanup(store.close)
    return store


__all__ = ["make_memory_store", "make_sqlite_store", "make_pg_store"]
