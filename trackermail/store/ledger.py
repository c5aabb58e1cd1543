# -*- test-case-name: tests.store.test_store -*-
"""
The processed-message ledger, and counts of what the store holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from trackermail.store.sql import Exec, Value


@dataclass(frozen=True)
class Stats:
    packages: int
    binaries: int
    emails: int
    subscriptions: int
    teams: int
    keywords: int
    news: int
    outbox_queued: int
    processed: int
    schema_version: int


def is_processed(digest: str):
    return (yield Value("SELECT 1 FROM processed_messages WHERE digest = ?", (digest,))) is not None


def mark_processed(digest: str, now: float, service: str = ""):
    """
    Record a processed message; fires with False when it already was (the
    caller's transaction should then roll back or skip its effects).
    """
    count = yield Exec(
        "INSERT INTO processed_messages (digest, processed, service) VALUES (?, ?, ?) "
        "ON CONFLICT (digest) DO NOTHING",
        (digest, now, service),
    )
    return count > 0


def schema_version():
    return (yield Value("SELECT MAX(version) FROM schema_version")) or 0


def stats():
    def count(sql):
        return Value(sql)

    packages = yield count("SELECT COUNT(*) FROM packages")
    binaries = yield count("SELECT COUNT(*) FROM binary_packages")
    emails = yield count("SELECT COUNT(*) FROM emails")
    subscriptions = yield count("SELECT COUNT(*) FROM subscriptions WHERE active")
    teams = yield count("SELECT COUNT(*) FROM teams")
    kws = yield count("SELECT COUNT(*) FROM keywords")
    news_count = yield count("SELECT COUNT(*) FROM news")
    queued = yield count("SELECT COUNT(*) FROM outbox_deliveries WHERE state = 'queued'")
    processed = yield count("SELECT COUNT(*) FROM processed_messages")
    version = yield from schema_version()
    return Stats(packages, binaries, emails, subscriptions, teams, kws, news_count,
                 queued, processed, version)


def ping():
    """A round trip to the database (health checks)."""
    return (yield Value("SELECT 1"))
