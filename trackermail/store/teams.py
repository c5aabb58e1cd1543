# -*- test-case-name: tests.store.test_store -*-
"""
Teams, their packages, and memberships (muted, own keywords, per package).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from trackermail.errors import AlreadyExists, UnknownEmail, UnknownPackage, UnknownTeam
from trackermail.store.emails import email_id
from trackermail.store.keywords import (
    apply_keyword_op,
    default_keywords_of,
    keyword_ids,
)
from trackermail.store.packages import package_id
from trackermail.store.sql import Exec, Later, Many, Row, Rows, Value
from trackermail.validation import check_slug, normalize_email


@dataclass(frozen=True)
class Team:
    slug: str
    name: str
    public: bool
    owner: str | None


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


def team_id(slug: str):
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
    yield Later(
        "INSERT INTO teams (slug, name, public, owner_id) VALUES (?, ?, ?, ?)",
        (slug, name or slug, bool(public), owner_id),
    )
    tid = yield from team_id(slug)
    if owner_id is not None:
        yield Later(
            "INSERT INTO memberships (team_id, email_id) VALUES (?, ?) "
            "ON CONFLICT (team_id, email_id) DO NOTHING",
            (tid, owner_id),
        )
    return Team(slug, name or slug, bool(public), owner)


def team_add_package(slug: str, package: str):
    tid = yield from team_id(slug)
    pid = yield from package_id(package)
    if pid is None:
        raise UnknownPackage(f'no package "{package}"')
    yield Later(
        "INSERT INTO team_packages (team_id, package_id) VALUES (?, ?) "
        "ON CONFLICT DO NOTHING",
        (tid, pid),
    )


def team_packages(slug: str):
    tid = yield from team_id(slug)
    rows = yield Rows(
        "SELECT p.name FROM team_packages tp JOIN packages p ON p.id = tp.package_id "
        "WHERE tp.team_id = ? ORDER BY p.name",
        (tid,),
    )
    return [r[0] for r in rows]


def join_team(slug: str, email: str):
    tid = yield from team_id(slug)
    eid = yield from email_id(email)
    count = yield Exec(
        "INSERT INTO memberships (team_id, email_id) VALUES (?, ?) "
        "ON CONFLICT (team_id, email_id) DO NOTHING",
        (tid, eid),
    )
    return count > 0


def leave_team(slug: str, email: str):
    tid = yield from team_id(slug)
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
    tid = yield from team_id(slug)
    rows = yield Rows(
        "SELECT e.email, e.id FROM memberships m JOIN emails e ON e.id = m.email_id "
        "WHERE m.team_id = ? AND NOT m.muted ORDER BY e.email_lower",
        (tid,),
    )
    return [tuple(r) for r in rows]


def set_membership_muted(slug: str, email: str, muted: bool, package: str | None = None):
    tid = yield from team_id(slug)
    eid = yield from email_id(email, create=False)
    mid = yield Value(
        "SELECT id FROM memberships WHERE team_id = ? AND email_id = ?", (tid, eid)
    )
    if mid is None:
        raise UnknownEmail(f"{email} is not a member of {slug}")
    if package is None:
        yield Later("UPDATE memberships SET muted = ? WHERE id = ?", (bool(muted), mid))
        return
    pid = yield from package_id(package)
    if pid is None:
        raise UnknownPackage(package)
    yield Later(
        "INSERT INTO membership_packages (membership_id, package_id, muted) VALUES (?, ?, ?) "
        "ON CONFLICT (membership_id, package_id) DO UPDATE SET muted = excluded.muted",
        (mid, pid, bool(muted)),
    )


def set_membership_keywords(slug: str, email: str, names: Iterable[str],
                            package: str | None = None):
    """Give a membership (or one of its packages) its own keyword set."""
    tid = yield from team_id(slug)
    eid = yield from email_id(email, create=False)
    mid = yield Value(
        "SELECT id FROM memberships WHERE team_id = ? AND email_id = ?", (tid, eid)
    )
    if mid is None:
        raise UnknownEmail(f"{email} is not a member of {slug}")
    ids = yield from keyword_ids(names)
    if package is None:
        yield Later("DELETE FROM membership_keywords WHERE membership_id = ?", (mid,))
        yield Many(
            "INSERT INTO membership_keywords (membership_id, keyword_id) VALUES (?, ?)",
            [(mid, k) for k in ids],
        )
        yield Later("UPDATE memberships SET own_keywords = TRUE WHERE id = ?", (mid,))
        return
    pid = yield from package_id(package)
    if pid is None:
        raise UnknownPackage(package)
    yield Later(
        "INSERT INTO membership_packages (membership_id, package_id, own_keywords) "
        "VALUES (?, ?, TRUE) ON CONFLICT (membership_id, package_id) "
        "DO UPDATE SET own_keywords = TRUE",
        (mid, pid),
    )
    yield Later(
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
    yield Later("UPDATE memberships SET muted = TRUE WHERE email_id = ?", (eid,))
    return [r[0] for r in rows]


@dataclass(frozen=True)
class Membership:
    """A membership as its member sees it: muted, and the packages muted in it."""

    muted: bool
    muted_packages: tuple[str, ...]


def _membership_id(slug: str, email: str):
    """C{(membership id, email id)}; L{UnknownEmail} when not a member."""
    tid = yield from team_id(slug)
    eid = yield from email_id(email, create=False)
    mid = None
    if eid is not None:
        mid = yield Value(
            "SELECT id FROM memberships WHERE team_id = ? AND email_id = ?", (tid, eid)
        )
    if mid is None:
        raise UnknownEmail(f"{email} is not a member of {slug}")
    return mid, eid


def membership(slug: str, email: str):
    """The L{Membership} of C{email} in team C{slug}, or None when not a member."""
    try:
        mid, _ = yield from _membership_id(slug, email)
    except UnknownEmail:
        return None
    muted = yield Value("SELECT muted FROM memberships WHERE id = ?", (mid,))
    rows = yield Rows(
        "SELECT p.name FROM membership_packages mp JOIN packages p ON p.id = mp.package_id "
        "WHERE mp.membership_id = ? AND mp.muted ORDER BY p.name",
        (mid,),
    )
    return Membership(bool(muted), tuple(r[0] for r in rows))


# ---------------------------------------------------------------------------
# Listing, removal and keyword reading (the admin CLI).


@dataclass(frozen=True)
class TeamSummary:
    team: Team
    members: int
    packages: int


def list_teams():
    """Every team with its number of members and packages, by slug."""
    rows = yield Rows(
        "SELECT t.slug, t.name, t.public, o.email, "
        "(SELECT COUNT(*) FROM memberships m WHERE m.team_id = t.id), "
        "(SELECT COUNT(*) FROM team_packages tp WHERE tp.team_id = t.id) "
        "FROM teams t LEFT JOIN emails o ON o.id = t.owner_id ORDER BY t.slug"
    )
    return [TeamSummary(Team(s, n, bool(p), o), int(m), int(c))
            for s, n, p, o, m, c in rows]


@dataclass(frozen=True)
class PackageSetting:
    """A member's own setting for one of the team's packages."""

    muted: bool
    keywords: tuple[str, ...] | None  # None: the membership's keywords


@dataclass(frozen=True)
class Member:
    email: str
    muted: bool
    keywords: tuple[str, ...] | None  # None: the address's default keywords
    packages: dict  # package name -> PackageSetting


def team_members(slug: str):
    """Every member of a team (muted ones too) with their settings, by address."""
    tid = yield from team_id(slug)
    rows = yield Rows(
        "SELECT m.id, e.email, m.muted, m.own_keywords FROM memberships m "
        "JOIN emails e ON e.id = m.email_id WHERE m.team_id = ? ORDER BY e.email_lower",
        (tid,),
    )
    own = {}
    for mid, kw in (yield Rows(
        "SELECT mk.membership_id, k.name FROM membership_keywords mk "
        "JOIN memberships m ON m.id = mk.membership_id JOIN keywords k ON k.id = mk.keyword_id "
        "WHERE m.team_id = ? ORDER BY k.name", (tid,))):
        own.setdefault(mid, []).append(kw)
    package_keywords = {}
    for mid, package, kw in (yield Rows(
        "SELECT mpk.membership_id, p.name, k.name FROM membership_package_keywords mpk "
        "JOIN memberships m ON m.id = mpk.membership_id "
        "JOIN packages p ON p.id = mpk.package_id JOIN keywords k ON k.id = mpk.keyword_id "
        "WHERE m.team_id = ? ORDER BY k.name", (tid,))):
        package_keywords.setdefault((mid, package), []).append(kw)
    settings: dict = {}
    for mid, package, muted, own_keywords in (yield Rows(
        "SELECT mp.membership_id, p.name, mp.muted, mp.own_keywords "
        "FROM membership_packages mp JOIN memberships m ON m.id = mp.membership_id "
        "JOIN packages p ON p.id = mp.package_id WHERE m.team_id = ? ORDER BY p.name",
        (tid,))):
        keywords = tuple(package_keywords.get((mid, package), ())) if own_keywords else None
        settings.setdefault(mid, {})[package] = PackageSetting(bool(muted), keywords)
    return [Member(email, bool(muted), tuple(own.get(mid, ())) if own_keywords else None,
                   settings.get(mid, {}))
            for mid, email, muted, own_keywords in rows]


def remove_team(slug: str):
    """Remove a team with its memberships; fires with C{(members, packages)} it had."""
    tid = yield from team_id(slug)
    members = yield Value("SELECT COUNT(*) FROM memberships WHERE team_id = ?", (tid,))
    packages = yield Value("SELECT COUNT(*) FROM team_packages WHERE team_id = ?", (tid,))
    yield Later("DELETE FROM teams WHERE id = ?", (tid,))
    return int(members), int(packages)


def team_remove_package(slug: str, package: str):
    """Take a package from a team; fires with whether the team had it."""
    tid = yield from team_id(slug)
    pid = yield from package_id(package)
    if pid is None:
        raise UnknownPackage(f"no package {package}")
    count = yield Exec(
        "DELETE FROM team_packages WHERE team_id = ? AND package_id = ?", (tid, pid)
    )
    return count > 0


def membership_keywords(slug: str, email: str, package: str | None = None):
    """
    The keywords a member gets for the team (or for one package of it):
    the per-package set if edited, else the membership's own set, else the
    address's defaults.
    """
    tid = yield from team_id(slug)
    eid = yield from email_id(email, create=False)
    row = yield Row(
        "SELECT id, own_keywords FROM memberships WHERE team_id = ? AND email_id = ?",
        (tid, eid),
    )
    if row is None:
        raise UnknownEmail(f"{email} is not a member of {slug}")
    mid, own = row
    if package is not None:
        pid = yield from package_id(package)
        if pid is None:
            raise UnknownPackage(f"no package {package}")
        edited = yield Value(
            "SELECT own_keywords FROM membership_packages "
            "WHERE membership_id = ? AND package_id = ?", (mid, pid))
        if edited:
            rows = yield Rows(
                "SELECT k.name FROM membership_package_keywords mpk "
                "JOIN keywords k ON k.id = mpk.keyword_id "
                "WHERE mpk.membership_id = ? AND mpk.package_id = ?", (mid, pid))
            return frozenset(r[0] for r in rows)
    if own:
        rows = yield Rows(
            "SELECT k.name FROM membership_keywords mk JOIN keywords k ON k.id = mk.keyword_id "
            "WHERE mk.membership_id = ?", (mid,))
        return frozenset(r[0] for r in rows)
    return (yield from default_keywords_of(eid))


def change_membership_keywords(slug: str, email: str, op: str, names: Iterable[str],
                               package: str | None = None):
    """Apply C{op} (C{+ - =}) to a membership's keywords; fires with the new set."""
    current = yield from membership_keywords(slug, email, package)
    new = apply_keyword_op(current, op, names)
    yield from set_membership_keywords(slug, email, new, package)
    return new
