# -*- test-case-name: tests.store.test_store -*-
"""
Store programs: the tracker's data logic, written once for both backends.

Each function here is a generator (see L{trackermail.store.sql}); run one with
C{store.run(ops.subscribe, email, package)} or compose them with
C{yield from} inside a bigger program (a control mail, a fan-out) so that
everything happens in one transaction.
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

from trackermail.errors import (
    AlreadyExists,
    InvalidValue,
    UnknownEmail,
    UnknownKeyword,
    UnknownPackage,
    UnknownTeam,
)
from trackermail.store.interface import (
    BounceDay,
    Keyword,
    NewsItem,
    OutboxSummary,
    PackageInfo,
    Resolution,
    Stats,
    Team,
)
from trackermail.store.sql import Exec, Many, Notify, Row, Rows, Value
from trackermail.validation import (
    check_keyword,
    check_package_name,
    check_slug,
    normalize_email,
)

# --------------------------------------------------------------------------
# Emails


def email_id(email: str, create: bool = True):
    """
    The id of an address, created when C{create} (case-insensitively unique).
    Fires with None for an unknown address when not creating.
    """
    email = normalize_email(email)
    key = email.lower()
    found = yield Value("SELECT id FROM emails WHERE email_lower = ?", (key,))
    if found is not None or not create:
        return found
    yield Exec(
        "INSERT INTO emails (email, email_lower) VALUES (?, ?) "
        "ON CONFLICT (email_lower) DO NOTHING",
        (email, key),
    )
    return (yield Value("SELECT id FROM emails WHERE email_lower = ?", (key,)))


def email_of_id(eid: int):
    return (yield Value("SELECT email FROM emails WHERE id = ?", (eid,)))


# --------------------------------------------------------------------------
# Packages


def package_id(name: str):
    return (yield Value("SELECT id FROM packages WHERE name = ?", (name,)))


def ensure_package(name: str, kind: str = "other"):
    """
    The id of package C{name}, creating it as C{kind} when missing. An
    existing C{other} package is promoted to C{source} or C{pseudo}.
    """
    check_package_name(name)
    pid = yield from package_id(name)
    if pid is None:
        yield Exec(
            "INSERT INTO packages (name, kind) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            (name, kind),
        )
        pid = yield from package_id(name)
    elif kind != "other":
        yield Exec(
            "UPDATE packages SET kind = ? WHERE id = ? AND kind = 'other'", (kind, pid)
        )
    return pid


def add_package(name: str, kind: str = "source", binaries: Sequence[str] = ()):
    if kind not in ("source", "pseudo", "other"):
        raise InvalidValue(f'"{kind}" is not a package kind (source, pseudo)')
    for b in binaries:
        check_package_name(b)
    pid = yield from ensure_package(name, kind)
    if kind != "other":
        yield Exec("UPDATE packages SET kind = ? WHERE id = ?", (kind, pid))
    if binaries:
        yield Many(
            "INSERT INTO binary_packages (name, source_id) VALUES (?, ?) "
            "ON CONFLICT DO NOTHING",
            [(b, pid) for b in sorted(set(binaries))],
        )
    return PackageInfo(name, kind)


def import_sources(entries: Sequence[tuple[str, Sequence[str]]]):
    """
    Bulk-create source packages and binary->source mappings: a handful of
    statements whatever the number of entries. Fires with the number of
    (sources, binary mappings) in the input.
    """
    sources = sorted({s for s, _ in entries})
    for s in sources:
        check_package_name(s)
    yield Many(
        "INSERT INTO packages (name, kind) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        [(s, "source") for s in sources],
    )
    known = yield Rows("SELECT name, id, kind FROM packages")
    ids = {name: pid for name, pid, _ in known}
    wanted = set(sources)
    promote = sorted(pid for name, pid, kind in known if kind == "other" and name in wanted)
    for start in range(0, len(promote), 500):
        chunk = promote[start: start + 500]
        yield Exec(
            f"UPDATE packages SET kind = 'source' WHERE id IN ({','.join('?' * len(chunk))})",
            chunk,
        )
    pairs = set()
    for source, binaries in entries:
        for b in binaries:
            if b and _valid_package(b):
                pairs.add((b, ids[source]))
    yield Many(
        "INSERT INTO binary_packages (name, source_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
        sorted(pairs),
    )
    return len(sources), len(pairs)


def _valid_package(name: str) -> bool:
    try:
        check_package_name(name)
    except InvalidValue:
        return False
    return True


def resolve_package(name: str):
    """
    Tell what a user-given package name is: see L{Resolution}.
    """
    check_package_name(name)
    row = yield Row("SELECT kind FROM packages WHERE name = ?", (name,))
    if row is not None and row[0] in ("source", "pseudo"):
        return Resolution(name, row[0], name)
    source = yield Value(
        "SELECT p.name FROM binary_packages b JOIN packages p ON p.id = b.source_id "
        "WHERE b.name = ? ORDER BY p.name LIMIT 1",
        (name,),
    )
    if source is not None:
        return Resolution(name, "binary", source)
    if row is not None:
        return Resolution(name, "other", name)
    return Resolution(name, "unknown", name)


def get_package(name: str):
    row = yield Row("SELECT name, kind FROM packages WHERE name = ?", (name,))
    return None if row is None else PackageInfo(row[0], row[1])


# --------------------------------------------------------------------------
# Keywords


def add_keyword(name: str, is_default: bool, description: str = ""):
    check_keyword(name)
    exists = yield Value("SELECT id FROM keywords WHERE name = ?", (name,))
    if exists is not None:
        raise AlreadyExists(f'keyword "{name}" already exists')
    yield Exec(
        "INSERT INTO keywords (name, is_default, description) VALUES (?, ?, ?)",
        (name, bool(is_default), description),
    )
    return Keyword(name, bool(is_default), description)


def keywords():
    rows = yield Rows("SELECT name, is_default, description FROM keywords ORDER BY name")
    return [Keyword(n, bool(d), desc) for n, d, desc in rows]


def keyword_ids(names: Iterable[str]):
    """
    Map keyword names to ids; raise L{UnknownKeyword} naming the unknown ones.
    """
    names = sorted(set(names))
    known = dict((yield Rows("SELECT name, id FROM keywords")))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UnknownKeyword(", ".join(unknown))
    return [known[n] for n in names]


def _keyword_id(name: str):
    kid = yield Value("SELECT id FROM keywords WHERE name = ?", (name,))
    if kid is None:
        raise UnknownKeyword(name)
    return kid


def _apply_op(current: frozenset, op: str, names: Iterable[str]) -> frozenset:
    names = frozenset(names)
    if op == "+":
        return current | names
    if op == "-":
        return current - names
    if op == "=":
        return names
    raise InvalidValue(f'"{op}" is not a keyword operation (+, - or =)')


def default_keywords(email: str):
    eid = yield from email_id(email, create=False)
    return (yield from _default_keywords_of(eid))


def _default_keywords_of(eid):
    if eid is not None:
        own = yield Value("SELECT own_default_keywords FROM emails WHERE id = ?", (eid,))
        if own:
            rows = yield Rows(
                "SELECT k.name FROM email_default_keywords d "
                "JOIN keywords k ON k.id = d.keyword_id WHERE d.email_id = ?",
                (eid,),
            )
            return frozenset(r[0] for r in rows)
    rows = yield Rows("SELECT name FROM keywords WHERE is_default")
    return frozenset(r[0] for r in rows)


def set_default_keywords(email: str, op: str, names: Iterable[str]):
    eid = yield from email_id(email)
    current = yield from _default_keywords_of(eid)
    new = _apply_op(current, op, names)
    ids = yield from keyword_ids(new)
    yield Exec("DELETE FROM email_default_keywords WHERE email_id = ?", (eid,))
    yield Many(
        "INSERT INTO email_default_keywords (email_id, keyword_id) VALUES (?, ?)",
        [(eid, k) for k in ids],
    )
    yield Exec("UPDATE emails SET own_default_keywords = TRUE WHERE id = ?", (eid,))
    return new


# --------------------------------------------------------------------------
# Subscriptions


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
        yield Exec(
            "INSERT INTO subscriptions (email_id, package_id, active, created) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (email_id, package_id) DO NOTHING",
            (eid, pid, bool(active), now),
        )
        return True
    if bool(row[1]) == bool(active):
        return False
    yield Exec("UPDATE subscriptions SET active = ? WHERE id = ?", (bool(active), row[0]))
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
        yield Exec("DELETE FROM subscriptions WHERE email_id = ?", (eid,))
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
    return (yield from _default_keywords_of(eid))


def set_subscription_keywords(email: str, package: str, op: str, names: Iterable[str]):
    current = yield from subscription_keywords(email, package)
    row, _ = yield from _subscription(email, package)
    new = _apply_op(current, op, names)
    ids = yield from keyword_ids(new)
    yield Exec("DELETE FROM subscription_keywords WHERE subscription_id = ?", (row[0],))
    yield Many(
        "INSERT INTO subscription_keywords (subscription_id, keyword_id) VALUES (?, ?)",
        [(row[0], k) for k in ids],
    )
    yield Exec("UPDATE subscriptions SET own_keywords = TRUE WHERE id = ?", (row[0],))
    return new


# The effective keyword set, as SQL: own set if edited, else the user's
# default set if edited, else the keywords marked default. :kw is the
# keyword's id and :kwdefault its default flag.
_DIRECT = """
SELECT e.email, e.email_lower, e.id FROM subscriptions s
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


def fanout_recipients(package: str, keyword: str):
    """
    Who gets mail of C{keyword} about C{package}, each address once: fires
    with a list of C{(email, email_id, team_slug_or_None)} sorted by
    address. Direct subscribers come first: an address reached both
    directly and through a team gets the direct-subscriber copy (team
    C{None}); team-only members get their first team by slug.
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
    chosen: dict[str, tuple] = {}
    for email, lower, eid in direct_rows:
        chosen.setdefault(lower, (email, eid, None))
    for email, lower, eid, slug in team_rows:
        chosen.setdefault(lower, (email, eid, slug))
    return [chosen[k] for k in sorted(chosen)]


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


# --------------------------------------------------------------------------
# Teams


def _team_row(slug: str):
    row = yield Row(
        "SELECT t.id, t.slug, t.name, t.public, e.email FROM teams t "
        "LEFT JOIN emails e ON e.id = t.owner_id WHERE t.slug = ?",
        (slug,),
    )
    return row


def get_team(slug: str):
    row = yield from _team_row(slug)
    return None if row is None else Team(row[1], row[2], bool(row[3]), row[4])


def _team_id(slug: str):
    row = yield from _team_row(slug)
    if row is None:
        raise UnknownTeam(f'no team "{slug}"')
    return row[0]


def add_team(slug: str, name: str, owner: str | None, public: bool = True):
    check_slug(slug)
    if (yield from _team_row(slug)) is not None:
        raise AlreadyExists(f'team "{slug}" already exists')
    owner_id = None
    if owner:
        owner_id = yield from email_id(owner)
    yield Exec(
        "INSERT INTO teams (slug, name, public, owner_id) VALUES (?, ?, ?, ?)",
        (slug, name or slug, bool(public), owner_id),
    )
    tid = yield from _team_id(slug)
    if owner_id is not None:
        yield Exec(
            "INSERT INTO memberships (team_id, email_id) VALUES (?, ?) "
            "ON CONFLICT (team_id, email_id) DO NOTHING",
            (tid, owner_id),
        )
    return Team(slug, name or slug, bool(public), owner)


def team_add_package(slug: str, package: str):
    tid = yield from _team_id(slug)
    pid = yield from package_id(package)
    if pid is None:
        raise UnknownPackage(f'no package "{package}"')
    yield Exec(
        "INSERT INTO team_packages (team_id, package_id) VALUES (?, ?) "
        "ON CONFLICT DO NOTHING",
        (tid, pid),
    )


def team_packages(slug: str):
    tid = yield from _team_id(slug)
    rows = yield Rows(
        "SELECT p.name FROM team_packages tp JOIN packages p ON p.id = tp.package_id "
        "WHERE tp.team_id = ? ORDER BY p.name",
        (tid,),
    )
    return [r[0] for r in rows]


def join_team(slug: str, email: str):
    tid = yield from _team_id(slug)
    eid = yield from email_id(email)
    count = yield Exec(
        "INSERT INTO memberships (team_id, email_id) VALUES (?, ?) "
        "ON CONFLICT (team_id, email_id) DO NOTHING",
        (tid, eid),
    )
    return count > 0


def leave_team(slug: str, email: str):
    tid = yield from _team_id(slug)
    eid = yield from email_id(email, create=False)
    if eid is None:
        return False
    count = yield Exec(
        "DELETE FROM memberships WHERE team_id = ? AND email_id = ?", (tid, eid)
    )
    return count > 0


def is_member(slug: str, email: str):
    row = yield Value(
        "SELECT 1 FROM memberships m JOIN teams t ON t.id = m.team_id "
        "JOIN emails e ON e.id = m.email_id WHERE t.slug = ? AND e.email_lower = ?",
        (slug, normalize_email(email).lower()),
    )
    return row is not None


def teams_of(email: str):
    rows = yield Rows(
        "SELECT t.slug, t.name, t.public, o.email FROM memberships m "
        "JOIN teams t ON t.id = m.team_id JOIN emails e ON e.id = m.email_id "
        "LEFT JOIN emails o ON o.id = t.owner_id "
        "WHERE e.email_lower = ? ORDER BY t.slug",
        (normalize_email(email).lower(),),
    )
    return [Team(s, n, bool(p), o) for s, n, p, o in rows]


def team_member_ids(slug: str):
    """C{(email, id)} of a team's unmuted members, sorted."""
    tid = yield from _team_id(slug)
    rows = yield Rows(
        "SELECT e.email, e.id FROM memberships m JOIN emails e ON e.id = m.email_id "
        "WHERE m.team_id = ? AND NOT m.muted ORDER BY e.email_lower",
        (tid,),
    )
    return [tuple(r) for r in rows]


def set_membership_muted(slug: str, email: str, muted: bool, package: str | None = None):
    tid = yield from _team_id(slug)
    eid = yield from email_id(email, create=False)
    mid = yield Value(
        "SELECT id FROM memberships WHERE team_id = ? AND email_id = ?", (tid, eid)
    )
    if mid is None:
        raise UnknownEmail(f"{email} is not a member of {slug}")
    if package is None:
        yield Exec("UPDATE memberships SET muted = ? WHERE id = ?", (bool(muted), mid))
        return
    pid = yield from package_id(package)
    if pid is None:
        raise UnknownPackage(package)
    yield Exec(
        "INSERT INTO membership_packages (membership_id, package_id, muted) VALUES (?, ?, ?) "
        "ON CONFLICT (membership_id, package_id) DO UPDATE SET muted = excluded.muted",
        (mid, pid, bool(muted)),
    )


def set_membership_keywords(slug: str, email: str, names: Iterable[str],
                            package: str | None = None):
    """Give a membership (or one of its packages) its own keyword set."""
    tid = yield from _team_id(slug)
    eid = yield from email_id(email, create=False)
    mid = yield Value(
        "SELECT id FROM memberships WHERE team_id = ? AND email_id = ?", (tid, eid)
    )
    if mid is None:
        raise UnknownEmail(f"{email} is not a member of {slug}")
    ids = yield from keyword_ids(names)
    if package is None:
        yield Exec("DELETE FROM membership_keywords WHERE membership_id = ?", (mid,))
        yield Many(
            "INSERT INTO membership_keywords (membership_id, keyword_id) VALUES (?, ?)",
            [(mid, k) for k in ids],
        )
        yield Exec("UPDATE memberships SET own_keywords = TRUE WHERE id = ?", (mid,))
        return
    pid = yield from package_id(package)
    if pid is None:
        raise UnknownPackage(package)
    yield Exec(
        "INSERT INTO membership_packages (membership_id, package_id, own_keywords) "
        "VALUES (?, ?, TRUE) ON CONFLICT (membership_id, package_id) "
        "DO UPDATE SET own_keywords = TRUE",
        (mid, pid),
    )
    yield Exec(
        "DELETE FROM membership_package_keywords WHERE membership_id = ? AND package_id = ?",
        (mid, pid),
    )
    yield Many(
        "INSERT INTO membership_package_keywords (membership_id, package_id, keyword_id) "
        "VALUES (?, ?, ?)",
        [(mid, pid, k) for k in ids],
    )


def mute_all_memberships(email: str):
    """Mute every team membership of an address; fires with the slugs."""
    eid = yield from email_id(email, create=False)
    if eid is None:
        return []
    rows = yield Rows(
        "SELECT t.slug FROM memberships m JOIN teams t ON t.id = m.team_id "
        "WHERE m.email_id = ? AND NOT m.muted ORDER BY t.slug",
        (eid,),
    )
    yield Exec("UPDATE memberships SET muted = TRUE WHERE email_id = ?", (eid,))
    return [r[0] for r in rows]


# --------------------------------------------------------------------------
# Confirmations


def create_confirmation(key: str, email: str, commands: list, now: float):
    yield Exec(
        "INSERT INTO confirmations (confirm_key, email_lower, commands, created) "
        "VALUES (?, ?, ?, ?)",
        (key, normalize_email(email).lower(), json.dumps(commands), now),
    )


def take_confirmation(key: str, now: float, expiry: float):
    """
    Consume a confirmation key: fires with C{(email_lower, commands)}, or with
    a reason string (C{"unknown"}, C{"used"}, C{"expired"}) when it cannot be
    used. Single use: the row is marked used in this transaction.
    """
    row = yield Row(
        "SELECT id, email_lower, commands, created, used FROM confirmations "
        "WHERE confirm_key = ?",
        (key,),
    )
    if row is None:
        return "unknown"
    cid, email, commands, created, used = row
    if used is not None:
        return "used"
    if created <= now - expiry:
        return "expired"
    count = yield Exec(
        "UPDATE confirmations SET used = ? WHERE id = ? AND used IS NULL", (now, cid)
    )
    if count == 0:
        return "used"
    return email, json.loads(commands)


def count_confirmation_send(email: str, day: str, limit: int):
    """
    Count one confirmation mail to C{email} on C{day} if under C{limit};
    fires with True when it may be sent.
    """
    key = normalize_email(email).lower()
    sent = yield Value(
        "SELECT sent FROM confirmation_sends WHERE email_lower = ? AND day = ?", (key, day)
    )
    if (sent or 0) >= limit:
        return False
    yield Exec(
        "INSERT INTO confirmation_sends (email_lower, day, sent) VALUES (?, ?, 1) "
        "ON CONFLICT (email_lower, day) DO UPDATE SET sent = confirmation_sends.sent + 1",
        (key, day),
    )
    return True


def purge_confirmations(now: float, expiry: float, today: str = ""):
    """
    Forget expired confirmations, and the per-day send counters of days
    before C{today}. Fires with the number of confirmations removed.
    """
    removed = yield Exec("DELETE FROM confirmations WHERE created <= ?", (now - expiry,))
    if today:
        yield Exec("DELETE FROM confirmation_sends WHERE day < ?", (today,))
    return removed


# --------------------------------------------------------------------------
# Bounces


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


# --------------------------------------------------------------------------
# Outbox


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


# --------------------------------------------------------------------------
# Ledger, news, stats


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


def add_news(package: str, title: str, content: bytes, content_type: str,
             created_by: str, now: float, create_package: bool = False):
    if create_package:
        pid = yield from ensure_package(package, "source")
    else:
        pid = yield from package_id(package)
        if pid is None:
            raise UnknownPackage(package)
    yield Exec(
        "INSERT INTO news (package_id, title, content, content_type, created_by, created) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (pid, title, bytes(content), content_type, created_by, now),
    )


def news(package: str | None = None, limit: int = 50):
    base = (
        "SELECT n.id, p.name, n.title, n.content, n.content_type, n.created_by, n.created "
        "FROM news n JOIN packages p ON p.id = n.package_id "
    )
    if package is None:
        rows = yield Rows(base + "ORDER BY n.created DESC, n.id DESC LIMIT ?", (limit,))
    else:
        rows = yield Rows(
            base + "WHERE p.name = ? ORDER BY n.created DESC, n.id DESC LIMIT ?",
            (package, limit),
        )
    return [NewsItem(i, p, t, bytes(c), ct, cb, cr) for i, p, t, c, ct, cb, cr in rows]


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
