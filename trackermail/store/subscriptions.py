# -*- test-case-name: tests.store.test_store -*-
"""
Subscriptions of addresses to packages, their keyword sets, who gets a mail
of a keyword about a package (direct subscribers and team members), and the
unsubscribe tokens of subscriptions (see L{trackermail.signing}).
"""

from __future__ import annotations

import secrets
from typing import Iterable, NamedTuple, Sequence

from trackermail.errors import UnknownPackage
from trackermail.signing import (
    InvalidToken,
    parse_subscription_token,
    subscription_token,
    subscription_token_matches,
)
from trackermail.store.emails import email_id
from trackermail.store.keywords import (
    apply_keyword_op,
    default_keywords_of,
    keyword_ids,
)
from trackermail.store.packages import ensure_package, package_id
from trackermail.store.sql import Exec, Later, Many, Row, Rows, Value
from trackermail.validation import normalize_email


def new_salt() -> str:
    """A fresh token salt: drawn whenever a subscription starts (again)."""
    return secrets.token_urlsafe(9)


def subscribe(email: str, package: str, active: bool = True, now: float = 0.0):
    """
    Subscribe C{email} to C{package} (creating the package name when it is
    unknown, as distro-tracker does). Fires with True when the subscription is
    new or re-activated, False when it was already active.
    """
    eid = yield from email_id(email)
    pid = yield from ensure_package(package)
    row = yield Row(
        "SELECT id, active FROM subscriptions WHERE email_id = ? AND package_id = ?",
        (eid, pid),
    )
    if row is None:
        yield Later(
            "INSERT INTO subscriptions (email_id, package_id, active, created, token_salt) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (email_id, package_id) DO NOTHING",
            (eid, pid, bool(active), now, new_salt()),
        )
        return True
    if bool(row[1]) == bool(active):
        return False
    # Starting again is a new subscription: the links of its earlier life
    # must not work for it.
    yield Later("UPDATE subscriptions SET active = ?, token_salt = ? WHERE id = ?",
               (bool(active), new_salt(), row[0]))
    return True


def is_subscribed(email: str, package: str):
    row = yield Value(
        "SELECT s.active FROM subscriptions s JOIN emails e ON e.id = s.email_id "
        "JOIN packages p ON p.id = s.package_id WHERE e.email_lower = ? AND p.name = ?",
        (normalize_email(email).lower(), package),
    )
    return bool(row)


def unsubscribe(email: str, package: str):
    eid = yield from email_id(email, create=False)
    if eid is None:
        return False
    pid = yield from package_id(package)
    if pid is None:
        return False
    count = yield Exec(
        "DELETE FROM subscriptions WHERE email_id = ? AND package_id = ?", (eid, pid)
    )
    return count > 0


def unsubscribe_all(email: str):
    packages = yield from subscriptions_of(email)
    eid = yield from email_id(email, create=False)
    if eid is not None:
        yield Later("DELETE FROM subscriptions WHERE email_id = ?", (eid,))
    return packages


def subscriptions_of(email: str):
    rows = yield Rows(
        "SELECT p.name FROM subscriptions s JOIN emails e ON e.id = s.email_id "
        "JOIN packages p ON p.id = s.package_id "
        "WHERE e.email_lower = ? AND s.active ORDER BY p.name",
        (normalize_email(email).lower(),),
    )
    return [r[0] for r in rows]


def subscribers_of(package: str):
    rows = yield Rows(
        "SELECT e.email FROM subscriptions s JOIN emails e ON e.id = s.email_id "
        "JOIN packages p ON p.id = s.package_id "
        "WHERE p.name = ? AND s.active ORDER BY e.email_lower",
        (package,),
    )
    return [r[0] for r in rows]


def _subscription(email: str, package: str):
    eid = yield from email_id(email, create=False)
    pid = yield from package_id(package)
    if eid is None or pid is None:
        return None, eid
    row = yield Row(
        "SELECT id, own_keywords FROM subscriptions WHERE email_id = ? AND package_id = ?",
        (eid, pid),
    )
    return row, eid


class NotSubscribed(UnknownPackage):
    """The address is not subscribed to that package."""


def subscription_keywords(email: str, package: str):
    row, eid = yield from _subscription(email, package)
    if row is None:
        raise NotSubscribed(f"{email} is not subscribed to {package}")
    if row[1]:
        rows = yield Rows(
            "SELECT k.name FROM subscription_keywords sk JOIN keywords k "
            "ON k.id = sk.keyword_id WHERE sk.subscription_id = ?",
            (row[0],),
        )
        return frozenset(r[0] for r in rows)
    return (yield from default_keywords_of(eid))


def set_subscription_keywords(email: str, package: str, op: str, names: Iterable[str]):
    current = yield from subscription_keywords(email, package)
    row, _ = yield from _subscription(email, package)
    new = apply_keyword_op(current, op, names)
    ids = yield from keyword_ids(new)
    yield Later("DELETE FROM subscription_keywords WHERE subscription_id = ?", (row[0],))
    yield Many(
        "INSERT INTO subscription_keywords (subscription_id, keyword_id) VALUES (?, ?)",
        [(row[0], k) for k in ids],
    )
    yield Later("UPDATE subscriptions SET own_keywords = TRUE WHERE id = ?", (row[0],))
    return new


# The effective keyword set, as SQL: own set if edited, else the user's
# default set if edited, else the keywords marked default. :kw is the
# keyword's id and :kwdefault its default flag.
_DIRECT = """
SELECT e.email, e.email_lower, e.id, s.id, s.token_salt FROM subscriptions s
JOIN emails e ON e.id = s.email_id
WHERE s.package_id = ? AND s.active AND (
  (s.own_keywords AND EXISTS (SELECT 1 FROM subscription_keywords sk
                              WHERE sk.subscription_id = s.id AND sk.keyword_id = ?))
  OR (NOT s.own_keywords AND e.own_default_keywords
      AND EXISTS (SELECT 1 FROM email_default_keywords d
                  WHERE d.email_id = e.id AND d.keyword_id = ?))
  OR (NOT s.own_keywords AND NOT e.own_default_keywords AND ?)
)
"""


_TEAM = """
SELECT e.email, e.email_lower, e.id, t.slug FROM team_packages tp
JOIN teams t ON t.id = tp.team_id
JOIN memberships m ON m.team_id = tp.team_id
JOIN emails e ON e.id = m.email_id
LEFT JOIN membership_packages mp
  ON mp.membership_id = m.id AND mp.package_id = tp.package_id
WHERE tp.package_id = ? AND NOT m.muted AND NOT COALESCE(mp.muted, FALSE) AND (
  (COALESCE(mp.own_keywords, FALSE) AND EXISTS (
      SELECT 1 FROM membership_package_keywords mpk
      WHERE mpk.membership_id = m.id AND mpk.package_id = tp.package_id
        AND mpk.keyword_id = ?))
  OR (NOT COALESCE(mp.own_keywords, FALSE) AND m.own_keywords AND EXISTS (
      SELECT 1 FROM membership_keywords mk
      WHERE mk.membership_id = m.id AND mk.keyword_id = ?))
  OR (NOT COALESCE(mp.own_keywords, FALSE) AND NOT m.own_keywords
      AND e.own_default_keywords AND EXISTS (
      SELECT 1 FROM email_default_keywords d
      WHERE d.email_id = e.id AND d.keyword_id = ?))
  OR (NOT COALESCE(mp.own_keywords, FALSE) AND NOT m.own_keywords
      AND NOT e.own_default_keywords AND ?)
)
ORDER BY t.slug
"""


class Binding(NamedTuple):
    """What the unsubscribe token of a direct subscriber's copy is made of."""

    subscription_id: int
    email_lower: str
    salt: str


class Recipient(NamedTuple):
    """One recipient of a fan-out; C{binding} is None for team copies."""

    email: str
    email_id: int
    team: str | None
    binding: Binding | None


def fanout_targets(package: str, keyword: str):
    """
    Who gets mail of C{keyword} about C{package}, each address once: fires
    with a list of L{Recipient} sorted by address. Direct subscribers come
    first: an address reached both directly and through a team gets the
    direct-subscriber copy (team C{None}, with the binding of its
    subscription); team-only members get their first team by slug.
    """
    pid = yield from package_id(package)
    if pid is None:
        return []
    krow = yield Row("SELECT id, is_default FROM keywords WHERE name = ?", (keyword,))
    if krow is None:
        return []
    kid, kdefault = krow[0], bool(krow[1])
    direct_rows = yield Rows(_DIRECT, (pid, kid, kid, kdefault))
    team_rows = yield Rows(_TEAM, (pid, kid, kid, kid, kdefault))
    chosen: dict[str, Recipient] = {}
    for email, lower, eid, sid, salt in direct_rows:
        chosen.setdefault(lower, Recipient(email, eid, None, Binding(sid, lower, salt or "")))
    for email, lower, eid, slug in team_rows:
        chosen.setdefault(lower, Recipient(email, eid, slug, None))
    return [chosen[k] for k in sorted(chosen)]


def fanout_recipients(package: str, keyword: str):
    """
    L{fanout_targets} as C{(email, email_id, team_slug_or_None)} tuples.
    """
    rows = yield from fanout_targets(package, keyword)
    return [(r.email, r.email_id, r.team) for r in rows]


def recipients_for(package: str, keyword: str):
    """
    C{(direct, team)}: a sorted list of emails of direct subscribers and a
    list of C{(email, slug)} of team members not reached directly.
    """
    rows = yield from fanout_recipients(package, keyword)
    direct = [email for email, _, slug in rows if slug is None]
    team = [(email, slug) for email, _, slug in rows if slug is not None]
    return direct, team


def subscribers_for(package: str, keyword: str):
    direct, team = yield from recipients_for(package, keyword)
    return sorted(direct + [email for email, _ in team], key=str.lower)


def dump_subscribers(packages: Sequence[str] = ()):
    """
    C{{package: [emails]}} of active subscriptions, the shape of
    distro-tracker's C{tracker_dump_subscribers --json}.
    """
    if packages:
        result = {}
        for name in packages:
            pid = yield from package_id(name)
            if pid is None:
                raise UnknownPackage(f'no package "{name}"')
            result[name] = yield from subscribers_of(name)
        return result
    rows = yield Rows(
        "SELECT p.name, e.email FROM subscriptions s JOIN emails e ON e.id = s.email_id "
        "JOIN packages p ON p.id = s.package_id WHERE s.active "
        "ORDER BY p.name, e.email_lower"
    )
    result: dict[str, list[str]] = {}
    for name, email in rows:
        result.setdefault(name, []).append(email)
    return result


# -- Unsubscribe tokens ------------------------------------------------------


def _token_subscription(secret: str, token: str, package: str | None):
    """
    C{(id, email, package)} of the active subscription C{token} was made
    for, or None: a malformed or altered token, one for another package
    than C{package} (when given), or for a subscription that has ended.
    """
    try:
        sid, mac = parse_subscription_token(token)
    except InvalidToken:
        return None
    row = yield Row(
        "SELECT e.email, e.email_lower, p.name, s.token_salt FROM subscriptions s "
        "JOIN emails e ON e.id = s.email_id JOIN packages p ON p.id = s.package_id "
        "WHERE s.id = ? AND s.active",
        (sid,),
    )
    if row is None:
        return None
    email, lower, name, salt = row
    if package is not None and package != name:
        return None
    if not subscription_token_matches(secret, mac, sid, name, lower, salt or ""):
        return None
    return sid, email, name


def token_subscription(secret: str, token: str):
    """C{(email, package)} of the subscription a token is good for, or None."""
    found = yield from _token_subscription(secret, token, None)
    return None if found is None else found[1:]


def unsubscribe_by_token(secret: str, token: str, package: str | None = None):
    """
    End the subscription C{token} was made for (and, when C{package} is
    given, only if it is for that package); fires with C{(email, package)},
    or None when the token is good for no current subscription.
    """
    found = yield from _token_subscription(secret, token, package)
    if found is None:
        return None
    sid, email, name = found
    yield Later("DELETE FROM subscriptions WHERE id = ?", (sid,))
    return email, name


def unsubscribe_token(secret: str, email: str, package: str):
    """The current unsubscribe token of C{email}'s subscription to C{package}, or None."""
    row = yield Row(
        "SELECT s.id, e.email_lower, s.token_salt FROM subscriptions s "
        "JOIN emails e ON e.id = s.email_id JOIN packages p ON p.id = s.package_id "
        "WHERE e.email_lower = ? AND p.name = ? AND s.active",
        (normalize_email(email).lower(), package),
    )
    if row is None:
        return None
    sid, lower, salt = row
    return subscription_token(secret, sid, package, lower, salt or "")
