# -*- test-case-name: tests.store.test_store -*-
"""
One schema for both backends: numbered SQL files in C{migrations/}, applied
in order by L{migrate}, each in the same transaction as the version bump.
"""

from __future__ import annotations

import re
from importlib import resources

from trackermail.store.sql import Exec, Rows, Value

DIALECT_TYPES = {
    "sqlite": {"serial": "INTEGER PRIMARY KEY", "blob": "BLOB"},
    "postgresql": {"serial": "BIGSERIAL PRIMARY KEY", "blob": "BYTEA"},
}

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations() -> list[tuple[int, str]]:
    """(version, SQL text) of every migration, in order."""
    found = []
    for entry in resources.files("trackermail.store").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    return sorted(found)


def latest_version() -> int:
    return migrations()[-1][0]


def statements(sql: str, dialect: str) -> list[str]:
    text = "\n".join(
        line for line in sql.splitlines() if not line.lstrip().startswith("--")
    )
    text = text.format(**DIALECT_TYPES[dialect])
    return [s.strip() for s in text.split(";") if s.strip()]


def migrate(dialect: str):
    """
    Store program: bring the schema to the latest version; fires with it.
    Safe to run again and from several nodes at once (PostgreSQL takes an
    advisory lock for the transaction).
    """
    if dialect == "postgresql":
        yield Exec("SELECT pg_advisory_xact_lock(727372)")
    yield Exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    applied = {row[0] for row in (yield Rows("SELECT version FROM schema_version"))}
    # Every file not applied yet, in order: a file numbered below the newest
    # applied one (branches merged in another order) is not skipped.
    for version, sql in migrations():
        if version in applied:
            continue
        for statement in statements(sql, dialect):
            yield Exec(statement)
        yield Exec("INSERT INTO schema_version (version) VALUES (?)", (version,))
        applied.add(version)
    return max(applied) if applied else 0


def current_version(dialect: str):
    """Store program: the schema version of the database, 0 when it has none."""
    if dialect == "sqlite":
        exists = yield Value(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        )
    else:
        exists = yield Value(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
        )
    if not exists:
        return 0
    return (yield Value("SELECT MAX(version) FROM schema_version")) or 0


def pending_versions(dialect: str):
    """Store program: the migrations this database has not applied yet, in order."""
    if (yield from current_version(dialect)) == 0:
        return [version for version, _ in migrations()]
    applied = {row[0] for row in (yield Rows("SELECT version FROM schema_version"))}
    return [version for version, _ in migrations() if version not in applied]
