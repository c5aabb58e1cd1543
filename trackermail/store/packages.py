# -*- test-case-name: tests.store.test_store -*-
"""
Package names: source and pseudo packages, binary -> source mappings, and
names only known because someone subscribed to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from trackermail.errors import InvalidValue, UnknownPackage
from trackermail.store.sql import Later, Many, Row, Rows, Value
from trackermail.validation import check_package_name


@dataclass(frozen=True)
class PackageInfo:
    name: str
    kind: str  # source | pseudo | other


@dataclass(frozen=True)
class Resolution:
    """
    What a name given by a user turned out to be.

    C{kind} is C{source}, C{pseudo}, C{other} (known only as a name),
    C{binary} (C{source} is then the source package it belongs to) or
    C{unknown}.
    """

    name: str
    kind: str
    source: str


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
        yield Later(
            "INSERT INTO packages (name, kind) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            (name, kind),
        )
        pid = yield from package_id(name)
    elif kind != "other":
        yield Later(
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
        yield Later("UPDATE packages SET kind = ? WHERE id = ?", (kind, pid))
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
        yield Later(
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


# ---------------------------------------------------------------------------
# Listing and removal (the admin CLI).


@dataclass(frozen=True)
class PackageSummary:
    name: str
    kind: str
    subscribers: int  # active subscriptions
    binaries: int


def list_packages(kind: str | None = None):
    """Every package (or those of one C{kind}) with counts, by name."""
    where, params = ("WHERE p.kind = ? ", (kind,)) if kind else ("", ())
    rows = yield Rows(
        "SELECT p.name, p.kind, "
        "(SELECT COUNT(*) FROM subscriptions s WHERE s.package_id = p.id AND s.active), "
        "(SELECT COUNT(*) FROM binary_packages b WHERE b.source_id = p.id) "
        f"FROM packages p {where}ORDER BY p.name",
        params,
    )
    return [PackageSummary(n, k, int(s), int(b)) for n, k, s, b in rows]


@dataclass(frozen=True)
class PackageRemoval:
    """What went with a removed package."""

    name: str
    subscriptions: int
    teams: int
    news: int
    binaries: int


def remove_package(name: str):
    """
    Remove a package and everything that hangs on it (subscriptions, team
    links, news, binary mappings, members' per-package settings).

    @raise UnknownPackage: no package of that name.
    """
    pid = yield from package_id(name)
    if pid is None:
        raise UnknownPackage(f"no package {name}")
    subscriptions = yield Value("SELECT COUNT(*) FROM subscriptions WHERE package_id = ?",
                                (pid,))
    teams = yield Value("SELECT COUNT(*) FROM team_packages WHERE package_id = ?", (pid,))
    news = yield Value("SELECT COUNT(*) FROM news WHERE package_id = ?", (pid,))
    binaries = yield Value("SELECT COUNT(*) FROM binary_packages WHERE source_id = ?", (pid,))
    yield Later("DELETE FROM packages WHERE id = ?", (pid,))
    return PackageRemoval(name, int(subscriptions), int(teams), int(news), int(binaries))
