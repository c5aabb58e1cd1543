# -*- test-case-name: tests.bounces.test_policy -*-
"""
Per-address, per-day counts of mail sent and bounced, read by the bounce
policy, and the copies that have bounced.

A row counts, for one address and the day copies were sent: C{sent}
copies, C{bounced} hard bounces (the address is gone), C{soft} other
bounces counted against the address, and C{refused} copies refused for
reasons of ours. A I{mail day} is one on which more copies were sent than
refused: only those tell anything about the address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from trackermail.errors import UnknownEmail
from trackermail.store.emails import email_id
from trackermail.store.sql import Exec, Later, Many, Rows, Value
from trackermail.validation import normalize_email

_COLUMNS = {"hard": "bounced", "soft": "soft", "refused": "refused"}


@dataclass(frozen=True)
class BounceDay:
    day: str
    sent: int
    bounced: int


@dataclass(frozen=True)
class MailDay:
    """One mail day of an address, as the policy reads it."""

    day: str
    sent: int
    bounced: int
    soft: int
    refused: int

    @property
    def all_hard(self) -> bool:
        """Every copy not refused by our side bounced hard."""
        return self.bounced >= self.sent - self.refused

    @property
    def all_bounced(self) -> bool:
        """Every copy not refused by our side bounced, hard or soft."""
        return self.bounced + self.soft >= self.sent - self.refused


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
    """Count a hard (or soft) bounce of a copy sent to C{email} on C{day}."""
    eid = yield from email_id(email, create=False)
    if eid is None:
        raise UnknownEmail(email)
    yield from record_effect(eid, day, "hard" if hard else "soft")


def record_effect(eid: int, day: str, effect: str):
    """
    Count one bounce of a copy sent on C{day} to address C{eid}: C{effect}
    is C{"hard"}, C{"soft"} or C{"refused"} (refused for reasons of ours).
    """
    column = _COLUMNS[effect]
    yield Later(
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


def mail_days(eid: int, days: int):
    """The C{days} latest mail days of address C{eid} (L{MailDay}), newest first."""
    rows = yield Rows(
        "SELECT day, sent, bounced, soft, refused FROM bounce_stats "
        "WHERE email_id = ? AND sent > refused ORDER BY day DESC LIMIT ?",
        (eid, days),
    )
    return [MailDay(*r) for r in rows]


def recent_mail_days(eid: int, days: int):
    """
    C{[(day, sent, bounced)]} of the C{days} latest mail days of the
    address, newest first.
    """
    return [(d.day, d.sent, d.bounced) for d in (yield from mail_days(eid, days))]


def trim_bounce_stats(email: str, keep: int):
    """Keep the stats of C{email} from its C{keep}-th latest mail day on."""
    eid = yield from email_id(email, create=False)
    if eid is None:
        return 0
    cutoff = yield Value(
        "SELECT day FROM bounce_stats WHERE email_id = ? AND sent > refused "
        "ORDER BY day DESC LIMIT 1 OFFSET ?",
        (eid, keep - 1),
    )
    if cutoff is None:
        return 0
    return (yield Exec("DELETE FROM bounce_stats WHERE email_id = ? AND day < ?",
                       (eid, cutoff)))


def trim_all_bounce_stats(keep: int, before: str | None = None):
    """
    Keep the stats of every address from its C{keep}-th latest mail day on:
    the policy never looks further back, and a row is written per address
    and day of mail. Rows that are no mail day (every copy refused by our
    side, or only a bounce) and older than C{before} go too.
    """
    removed = yield Exec(
        "DELETE FROM bounce_stats WHERE EXISTS ("
        " SELECT 1 FROM ("
        "  SELECT email_id, day, ROW_NUMBER() OVER"
        "   (PARTITION BY email_id ORDER BY day DESC) AS n"
        "  FROM bounce_stats WHERE sent > refused) ranked"
        " WHERE ranked.n = ? AND ranked.email_id = bounce_stats.email_id"
        "  AND bounce_stats.day < ranked.day)",
        (keep,),
    )
    if before is not None:
        removed += yield Exec(
            "DELETE FROM bounce_stats WHERE sent <= refused AND day < ?", (before,))
    return removed


def mark_copy_bounced(copy: str, day: str, now: float):
    """
    Record that copy C{copy} (sent on C{day}) bounced; fires with False when
    it already had.
    """
    count = yield Exec(
        "INSERT INTO bounced_copies (copy, day, seen) VALUES (?, ?, ?) "
        "ON CONFLICT (copy) DO NOTHING",
        (copy, day, now),
    )
    return count > 0


def trim_bounced_copies(before: str):
    """Forget the copies sent before day C{before}: their bounces are too old to count."""
    return (yield Exec("DELETE FROM bounced_copies WHERE day < ?", (before,)))


def receives_mail(email: str):
    """Whether C{email} has an active subscription or an unmuted team membership."""
    found = yield Value(
        "SELECT 1 FROM emails e WHERE e.email_lower = ? AND ("
        " EXISTS (SELECT 1 FROM subscriptions s WHERE s.email_id = e.id AND s.active)"
        " OR EXISTS (SELECT 1 FROM memberships m WHERE m.email_id = e.id AND NOT m.muted))",
        (normalize_email(email).lower(),),
    )
    return found is not None


def bouncing_addresses(since: str, days: int, domain: str | None = None,
                       limit: int = 1000):
    """
    C{[(email, [MailDay, ...])]}: the addresses (of C{domain}, or all) with
    a bounce counted against them for a copy sent on a day from C{since}
    on, each with its C{days} latest mail days (newest first), at most
    C{limit} addresses, by address.
    """
    where, params = "", [since]
    if domain:
        suffix = "@" + domain.lower()
        where = " AND SUBSTR(e.email_lower, LENGTH(e.email_lower) - ? + 1) = ?"
        params += [len(suffix), suffix]
    rows = yield Rows(
        "SELECT e.id, e.email FROM emails e WHERE e.id IN ("
        " SELECT email_id FROM bounce_stats WHERE day >= ? AND bounced + soft > 0)"
        f"{where} ORDER BY e.email_lower LIMIT ?",
        params + [limit],
    )
    result = []
    for eid, email in rows:
        result.append((email, (yield from mail_days(eid, days))))
    return result
