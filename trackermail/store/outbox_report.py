# -*- test-case-name: tests.outbound.test_outbox_store -*-
"""
The outbox as operators see it and act on it: counts, what is in flight
and on which node, deferred and failed deliveries grouped by their error,
and putting deliveries back in the queue.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from trackermail.store.outbox import placeholders
from trackermail.store.sql import Notify, Rows, Value


@dataclass(frozen=True)
class OutboxSummary:
    """
    Deliveries by state, and the oldest due time; C{sent}: the copies sent
    of the messages not purged yet (see L{purge_finished}).
    """

    queued: int
    sending: int
    sent: int
    failed: int
    oldest_due: float | None


@dataclass(frozen=True)
class MessageCounts:
    """One outbox message: copies sent, when the last one went, deliveries left by state."""

    id: int
    origin: str
    sent: int
    last_sent: float | None
    left: dict[str, int]


@dataclass(frozen=True)
class Claims:
    """Deliveries one node is sending, and when its leases on them end."""

    node: str
    count: int
    first_expiry: float
    last_expiry: float


@dataclass(frozen=True)
class InFlight:
    id: int
    recipient: str
    node: str
    claimed_until: float
    attempts: int


@dataclass(frozen=True)
class ErrorGroup:
    """Deferred (or failed) deliveries sharing one last error."""

    code: int | None
    error: str
    count: int
    next_attempt: float | None


@dataclass(frozen=True)
class OutboxReport:
    """What C{trackermail outbox} and C{trackermail status} show."""

    summary: OutboxSummary
    due: int
    claims: list[Claims]
    in_flight: list[InFlight]
    deferred: list[ErrorGroup]
    failed: list[ErrorGroup]


def outbox_summary(now: float):
    """Counts by state and the oldest due time (cheap: for metrics)."""
    rows = yield Rows("SELECT state, COUNT(*) FROM outbox_deliveries GROUP BY state")
    counts = dict(rows)
    # Sent copies are gone from the deliveries: their messages count them.
    counts["sent"] = (yield Value("SELECT COALESCE(SUM(sent), 0) FROM outbox_messages")) or 0
    oldest = yield Value(
        "SELECT MIN(next_attempt) FROM outbox_deliveries WHERE state = 'queued'"
        " AND next_attempt <= ?",
        (now,),
    )
    return OutboxSummary(
        queued=counts.get("queued", 0),
        sending=counts.get("sending", 0),
        sent=counts.get("sent", 0),
        failed=counts.get("failed", 0),
        oldest_due=oldest,
    )


_ADDRESS = re.compile(r"<[^<>\s]*@[^<>\s]*>")


def error_kind(text: str) -> str:
    """An error text without the addresses in it, to group errors that differ only by them."""
    return _ADDRESS.sub("<...>", text or "")


def _error_groups(rows, limit: int) -> list[ErrorGroup]:
    merged: dict[tuple, list] = {}
    for code, error, count, next_attempt in rows:
        key = (code, error_kind(error))
        entry = merged.setdefault(key, [0, None])
        entry[0] += count
        if next_attempt is not None and (entry[1] is None or next_attempt < entry[1]):
            entry[1] = next_attempt
    groups = [ErrorGroup(code, error, count, when)
              for (code, error), (count, when) in merged.items()]
    groups.sort(key=lambda g: (-g.count, g.error))
    return groups[:limit]


def outbox_report(now: float, limit: int = 20):
    """
    The outbox for an operator (an L{OutboxReport}): counts, how many are
    due now, claims by node with their lease expiry, the first C{limit}
    deliveries in flight, and deferred and failed deliveries grouped by
    their last error (addresses left out), largest groups first.
    """
    summary = yield from outbox_summary(now)
    due = yield Value(
        "SELECT COUNT(*) FROM outbox_deliveries WHERE state = 'queued' AND next_attempt <= ?",
        (now,))
    claims = yield Rows(
        "SELECT claimed_by, COUNT(*), MIN(claimed_until), MAX(claimed_until) "
        "FROM outbox_deliveries WHERE state = 'sending' GROUP BY claimed_by ORDER BY claimed_by")
    in_flight = yield Rows(
        "SELECT id, recipient, claimed_by, claimed_until, attempts FROM outbox_deliveries "
        "WHERE state = 'sending' ORDER BY claimed_until, id LIMIT ?", (limit,))
    deferred = yield Rows(
        "SELECT last_code, last_error, COUNT(*), MIN(next_attempt) FROM outbox_deliveries "
        "WHERE state = 'queued' AND last_code IS NOT NULL GROUP BY last_code, last_error")
    failed = yield Rows(
        "SELECT last_code, last_error, COUNT(*), NULL FROM outbox_deliveries "
        "WHERE state = 'failed' GROUP BY last_code, last_error")
    return OutboxReport(
        summary=summary,
        due=due or 0,
        claims=[Claims(node or "", n, first, last) for node, n, first, last in claims],
        in_flight=[InFlight(*row) for row in in_flight],
        deferred=_error_groups(deferred, limit),
        failed=_error_groups(failed, limit),
    )


def requeue_deliveries(now: float, ids: Sequence[int] | None = None, failed: bool = False):
    """
    Make deferred deliveries (all, or those of C{ids}) due at C{now}; with
    C{failed}, also put failed ones back in the queue, as new (attempts and
    the give-up clock start again). Fires with the ids requeued, sorted.
    """
    where = ""
    params: list = []
    if ids is not None:
        if not ids:
            return []
        where = f" AND id IN ({placeholders(len(ids))})"
        params = list(ids)
    rows = list((yield Rows(
        "UPDATE outbox_deliveries SET next_attempt = ? "
        f"WHERE state = 'queued' AND next_attempt > ?{where} RETURNING id",
        (now, now, *params))))
    if failed:
        rows += yield Rows(
            "UPDATE outbox_deliveries SET state = 'queued', next_attempt = ?, created = ?, "
            f"attempts = 0, finished = NULL WHERE state = 'failed'{where} RETURNING id",
            (now, now, *params))
    if rows:
        yield Notify("outbox")
    return sorted(r[0] for r in rows)


def delivery_rows(message_id: int | None = None):
    """(recipient, sender, state, attempts, last_code, last_error) rows, for tests and tools."""
    where, params = ("", ()) if message_id is None else (" WHERE message_id = ?", (message_id,))
    rows = yield Rows("SELECT recipient, sender, state, attempts, last_code, last_error "
                      f"FROM outbox_deliveries{where} ORDER BY id", params)
    return [tuple(r) for r in rows]


def message_counts(message_id: int | None = None):
    """
    A L{MessageCounts} per outbox message (all, or C{message_id}'s) in order
    of id: copies sent, deliveries left by state. For tests and tools.
    """
    where, params = ("", ()) if message_id is None else (" WHERE id = ?", (message_id,))
    messages = yield Rows(
        f"SELECT id, origin, sent, last_sent FROM outbox_messages{where} ORDER BY id", params)
    where = "" if message_id is None else " WHERE message_id = ?"
    left: dict[int, dict[str, int]] = defaultdict(dict)
    for mid, state, n in (yield Rows(
            f"SELECT message_id, state, COUNT(*) FROM outbox_deliveries{where} "
            "GROUP BY message_id, state", params)):
        left[mid][state] = n
    return [MessageCounts(mid, origin or "", sent, last_sent, left.get(mid, {}))
            for mid, origin, sent, last_sent in messages]
