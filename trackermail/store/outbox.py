# -*- test-case-name: tests.outbound.test_sender -*-
"""
The outbox: message bodies stored once, one delivery row per recipient, and
the programs the sender uses to claim due deliveries and record results.

A claim is a lease: the delivery goes to C{sending} with C{claimed_until};
if the node dies before recording the result, the lease runs out and the
delivery is claimed again. So a crash re-sends at most the deliveries whose
result was not yet recorded. On PostgreSQL the claim uses C{FOR UPDATE SKIP
LOCKED}, so any number of nodes can share one outbox without sending
anything twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from trackermail.store.sql import Exec, Many, Notify, Rows, Value


@dataclass(frozen=True)
class Delivery:
    id: int
    message_id: int
    recipient: str
    sender: str
    attempts: int
    created: float
    prefix: bytes = b""


@dataclass(frozen=True)
class OutboxSummary:
    queued: int
    sending: int
    sent: int
    failed: int
    oldest_due: float | None


def enqueue(body: bytes, deliveries: Sequence[tuple[str, str]], now: float):
    """
    Store C{body} once and one queued delivery per C{(recipient, sender)}
    or C{(recipient, sender, prefix)}, where C{prefix} are header lines sent
    before the body for that recipient only.
    Fires with the message id (None when there is nobody to send to).
    """
    if not deliveries:
        return None
    mid = yield Value(
        "INSERT INTO outbox_messages (body, created) VALUES (?, ?) RETURNING id",
        (bytes(body), now),
    )
    yield Many(
        "INSERT INTO outbox_deliveries "
        "(message_id, recipient, sender, next_attempt, created, prefix) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(mid, d[0], d[1], now, now, bytes(d[2]) if len(d) > 2 and d[2] else None)
         for d in deliveries],
    )
    yield Notify("outbox")
    return mid


def outbox_body(message_id: int):
    body = yield Value("SELECT body FROM outbox_messages WHERE id = ?", (message_id,))
    return None if body is None else bytes(body)


def outbox_summary(now: float):
    rows = yield Rows("SELECT state, COUNT(*) FROM outbox_deliveries GROUP BY state")
    counts = dict(rows)
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


def delivery_rows(message_id: int | None = None):
    """(recipient, sender, state, attempts, last_code, last_error) rows, for tests and tools."""
    if message_id is None:
        rows = yield Rows(
            "SELECT recipient, sender, state, attempts, last_code, last_error "
            "FROM outbox_deliveries ORDER BY id"
        )
    else:
        rows = yield Rows(
            "SELECT recipient, sender, state, attempts, last_code, last_error "
            "FROM outbox_deliveries WHERE message_id = ? ORDER BY id",
            (message_id,),
        )
    return [tuple(r) for r in rows]


_CLAIM = """
UPDATE outbox_deliveries
SET state = 'sending', claimed_by = ?, claimed_until = ?, attempts = attempts + 1
WHERE id IN (
    SELECT id FROM outbox_deliveries
    WHERE (state = 'queued' AND next_attempt <= ?)
       OR (state = 'sending' AND claimed_until < ?)
    ORDER BY next_attempt, id
    LIMIT ?{lock}
)
RETURNING id, message_id, recipient, sender, attempts, created, prefix
"""


def claim_due(dialect: str, node: str, now: float, limit: int, lease: float):
    lock = " FOR UPDATE SKIP LOCKED" if dialect == "postgresql" else ""
    rows = yield Rows(_CLAIM.format(lock=lock), (node, now + lease, now, now, limit))
    deliveries = [Delivery(*row[:6], prefix=bytes(row[6]) if row[6] else b"") for row in rows]
    deliveries.sort(key=lambda d: (d.message_id, d.id))
    return deliveries


def _chunks(items: Sequence, size: int = 500):
    for start in range(0, len(items), size):
        yield items[start: start + size]


def mark_sent(ids: Sequence[int], now: float, code: int = 250):
    for chunk in _chunks(sorted(ids)):
        yield Exec(
            f"UPDATE outbox_deliveries SET state = 'sent', finished = ?, last_code = ?, "
            f"last_error = NULL, claimed_by = NULL, claimed_until = NULL "
            f"WHERE id IN ({','.join('?' * len(chunk))})",
            (now, code, *chunk),
        )


def mark_retry(delivery_id: int, next_attempt: float, code: int, error: str):
    yield Exec(
        "UPDATE outbox_deliveries SET state = 'queued', next_attempt = ?, last_code = ?, "
        "last_error = ?, claimed_by = NULL, claimed_until = NULL WHERE id = ?",
        (next_attempt, code, error[:1000], delivery_id),
    )


def mark_failed(delivery_id: int, now: float, code: int, error: str):
    yield Exec(
        "UPDATE outbox_deliveries SET state = 'failed', finished = ?, last_code = ?, "
        "last_error = ?, claimed_by = NULL, claimed_until = NULL WHERE id = ?",
        (now, code, error[:1000], delivery_id),
    )


def purge_finished(before: float):
    """
    Forget deliveries that finished before C{before}, and bodies nobody
    needs any more. Failed deliveries are kept for the operator.
    """
    yield Exec(
        "DELETE FROM outbox_deliveries WHERE state = 'sent' AND finished < ?", (before,)
    )
    yield Exec(
        "DELETE FROM outbox_messages WHERE created < ? AND NOT EXISTS "
        "(SELECT 1 FROM outbox_deliveries d WHERE d.message_id = outbox_messages.id)",
        (before,),
    )


def bodies(message_ids: Sequence[int]):
    result = {}
    for chunk in _chunks(sorted(set(message_ids)), 100):
        rows = yield Rows(
            f"SELECT id, body FROM outbox_messages WHERE id IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        result.update((mid, bytes(body)) for mid, body in rows)
    return result


def next_due():
    """When the next queued delivery is due (None when none is queued)."""
    return (yield Value(
        "SELECT MIN(next_attempt) FROM outbox_deliveries WHERE state = 'queued'"
    ))
