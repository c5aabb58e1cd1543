# -*- test-case-name: tests.test_cli_bounces -*-
"""
What bounced, per day, destination domain and bounce reason: how many
copies (hard and soft), when first and last, and the last diagnostic.
The operator's view of bounces (C{trackermail bounces}), and the signal
that a domain refuses our mail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from trackermail.store.sql import Exec, Later, Rows, Value

# Enough of a diagnostic to recognise it; they can be long.
_MAX_DIAGNOSTIC = 300


@dataclass(frozen=True)
class DomainReason:
    """Bounces of one destination domain for one reason, over some days."""

    domain: str
    reason: str
    group: str
    hard: int
    soft: int
    first_seen: float
    last_seen: float
    diagnostic: str

    @property
    def copies(self) -> int:
        return self.hard + self.soft


def record_domain_bounce(day: str, domain: str, reason: str, group: str, hard: bool,
                         now: float, diagnostic: str = ""):
    """
    Count one bounced copy to C{domain} for C{reason}; fires with True when
    it is the first of that domain and reason on C{day}.
    """
    column = "hard" if hard else "soft"
    text = " ".join((diagnostic or "").split())[:_MAX_DIAGNOSTIC]
    existed = yield Value(
        "SELECT 1 FROM bounce_domains WHERE day = ? AND domain = ? AND reason = ?",
        (day, domain, reason),
    )
    yield Later(
        f"INSERT INTO bounce_domains (day, domain, reason, grp, {column}, first_seen,"
        f" last_seen, diagnostic) VALUES (?, ?, ?, ?, 1, ?, ?, ?) "
        f"ON CONFLICT (day, domain, reason) DO UPDATE SET"
        f" {column} = bounce_domains.{column} + 1, grp = excluded.grp,"
        f" last_seen = excluded.last_seen, diagnostic = excluded.diagnostic",
        (day, domain, reason, group, now, now, text),
    )
    return existed is None


def refusing_since(domain: str, reason: str, day: str):
    """
    When C{domain} started bouncing for C{reason}: the first time seen on
    the run of consecutive days that ends on C{day}.
    """
    rows = yield Rows(
        "SELECT day, first_seen FROM bounce_domains WHERE domain = ? AND reason = ?"
        " AND day <= ? ORDER BY day DESC",
        (domain, reason, day),
    )
    since = None
    expected = date.fromisoformat(day)
    for found, first_seen in rows:
        if date.fromisoformat(found) != expected:
            break
        since = first_seen
        expected -= timedelta(days=1)
    return since


def domain_report(since: str, domain: str | None = None):
    """
    C{[DomainReason]} of the days from C{since} on (all domains, or one),
    the most copies first.
    """
    where, params = "day >= ?", [since]
    if domain:
        where += " AND domain = ?"
        params.append(domain.lower())
    rows = yield Rows(
        "SELECT domain, reason, MAX(grp), SUM(hard), SUM(soft), MIN(first_seen),"
        f" MAX(last_seen) FROM bounce_domains WHERE {where}"
        " GROUP BY domain, reason ORDER BY SUM(hard) + SUM(soft) DESC, domain, reason",
        params,
    )
    result = []
    for name, reason, group, hard, soft, first, last in rows:
        text = yield Value(
            "SELECT diagnostic FROM bounce_domains WHERE domain = ? AND reason = ?"
            " AND day >= ? ORDER BY last_seen DESC LIMIT 1",
            (name, reason, since),
        )
        result.append(DomainReason(name, reason, group, int(hard), int(soft),
                                   float(first), float(last), text or ""))
    return result


def trim_domain_bounces(before: str):
    """Forget the days before C{before}."""
    return (yield Exec("DELETE FROM bounce_domains WHERE day < ?", (before,)))
