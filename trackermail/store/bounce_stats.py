# -*- test-case-name: tests.bounces.test_policy -*-
"""
Per-address, per-day counts of mail sent and bounced, read by the bounce
policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from trackermail.errors import UnknownEmail
from trackermail.store.emails import email_id
from trackermail.store.sql import Exec, Many, Rows
from trackermail.validation import normalize_email


@dataclass(frozen=True)
class BounceDay:
    day: str
    sent: int
    bounced: int


def record_sent(emails: Sequence[str], day: str):
    """Count one mail sent to each address on day (addresses must exist)."""
    keys = sorted({normalize_email(e).lower() for e in emails})
    if not keys:
        return
    ids = []
    for start in range(0, len(keys), 500):
        chunk = keys[start: start + 500]
        marks = ",".join("?" * len(chunk))
        rows = yield Rows(f"SELECT id FROM emails WHERE email_lower IN ({marks})", chunk)
        ids.extend(r[0] for r in rows)
    yield from record_sent_ids(ids, day)


def record_sent_ids(email_ids: Sequence[int], day: str):
    """Count one mail sent to each address id on day (one statement per chunk)."""
    yield Many(
        "INSERT INTO bounce_stats (email_id, day, sent) VALUES (?, ?, 1) "
        "ON CONFLICT (email_id, day) DO UPDATE SET sent = bounce_stats.sent + 1",
        [(i, day) for i in sorted(set(email_ids))],
    )


def record_bounce(email: str, day: str, hard: bool = True):
    eid = yield from email_id(email, create=False)
    if eid is None:
        raise UnknownEmail(email)
    column = "bounced" if hard else "soft"
    yield Exec(
        f"INSERT INTO bounce_stats (email_id, day, {column}) VALUES (?, ?, 1) "
        f"ON CONFLICT (email_id, day) DO UPDATE SET {column} = bounce_stats.{column} + 1",
        (eid, day),
    )


def bounce_stats(email: str):
    eid = yield from email_id(email, create=False)
    if eid is None:
        return []
    rows = yield Rows(
        "SELECT day, sent, bounced FROM bounce_stats WHERE email_id = ? ORDER BY day DESC",
        (eid,),
    )
    return [BounceDay(d, s, b) for d, s, b in rows]


def trim_bounce_stats(email: str, keep: int):
    eid = yield from email_id(email, create=False)
    if eid is None:
        return
    days = yield Rows(
        "SELECT day FROM bounce_stats WHERE email_id = ? ORDER BY day DESC", (eid,)
    )
    for (day,) in days[keep:]:
        yield Exec("DELETE FROM bounce_stats WHERE email_id = ? AND day = ?", (eid, day))


def trim_all_bounce_stats(keep: int):
    """
    Keep at most the C{keep} latest days of stats of every address: the
    policy never looks further back, and a row is written per address and
    day of mail.
    """
    return (yield Exec(
        "DELETE FROM bounce_stats WHERE (email_id, day) IN ("
        " SELECT email_id, day FROM ("
        "  SELECT email_id, day, ROW_NUMBER() OVER"
        "   (PARTITION BY email_id ORDER BY day DESC) AS n FROM bounce_stats) ranked"
        " WHERE n > ?)",
        (keep,),
    ))


def recent_mail_days(email_id: int, days: int):
    """
    C{[(day, sent, bounced)]} of the C{days} latest days on which mail was
    sent to the address, newest first.
    """
    rows = yield Rows(
        "SELECT day, sent, bounced FROM bounce_stats WHERE email_id = ? AND sent > 0 "
        "ORDER BY day DESC LIMIT ?",
        (email_id, days),
    )
    return [tuple(r) for r in rows]
