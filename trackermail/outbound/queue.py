# -*- test-case-name: tests.outbound.test_sender -*-
"""
Store programs of the outbox: claiming due deliveries and recording what
happened to them.

A claim is a lease: the delivery goes to C{sending} with C{claimed_until};
if the node dies before recording the result, the lease runs out and the
delivery is claimed again. So a crash re-sends at most the deliveries whose
result was not yet recorded. On PostgreSQL the claim uses C{FOR UPDATE SKIP
LOCKED}, so any number of nodes can share one outbox without sending
anything twice.
"""

from __future__ import annotations

from typing import Sequence

from trackermail.store.interface import Delivery
from trackermail.store.sql import Exec, Rows

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
