# -*- test-case-name: tests.store.test_store -*-
"""
Keywords and the per-address default keyword sets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from trackermail.errors import AlreadyExists, InvalidValue, UnknownKeyword
from trackermail.store.emails import email_id
from trackermail.store.sql import Later, Many, Rows, Value
from trackermail.validation import check_keyword


@dataclass(frozen=True)
class Keyword:
    name: str
    is_default: bool
    description: str


def add_keyword(name: str, is_default: bool, description: str = ""):
    check_keyword(name)
    exists = yield Value("SELECT id FROM keywords WHERE name = ?", (name,))
    if exists is not None:
        raise AlreadyExists(f'keyword "{name}" already exists')
    yield Later(
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


def apply_keyword_op(current: frozenset, op: str, names: Iterable[str]) -> frozenset:
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
    return (yield from default_keywords_of(eid))


def default_keywords_of(eid):
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
    current = yield from default_keywords_of(eid)
    new = apply_keyword_op(current, op, names)
    ids = yield from keyword_ids(new)
    yield Later("DELETE FROM email_default_keywords WHERE email_id = ?", (eid,))
    yield Many(
        "INSERT INTO email_default_keywords (email_id, keyword_id) VALUES (?, ?)",
        [(eid, k) for k in ids],
    )
    yield Later("UPDATE emails SET own_default_keywords = TRUE WHERE id = ?", (eid,))
    return new


# ---------------------------------------------------------------------------
# Built-in keywords and removal (the admin CLI).

_SEED = re.compile(r"INSERT\s+INTO\s+keywords\s*\([^)]*\)\s*VALUES(.*?);", re.I | re.S)
_SEED_ROW = re.compile(r"\(\s*'((?:[^']|'')*)'\s*,\s*(TRUE|FALSE)\s*,\s*'((?:[^']|'')*)'\s*\)",
                       re.I)


def builtin_keywords() -> list[Keyword]:
    """
    The keywords the migrations create (classification produces them), in
    their order. Not a store program: read from the migration files.
    """
    from trackermail.store.schema import migrations

    found = []
    for _, sql in migrations():
        for block in _SEED.findall(sql):
            for name, default, description in _SEED_ROW.findall(block):
                found.append(Keyword(name.replace("''", "'"), default.upper() == "TRUE",
                                     description.replace("''", "'")))
    return found


def remove_keyword(name: str):
    """
    Remove a keyword from the store and from every keyword set that has it;
    fires with the number of keyword sets it was in.

    @raise UnknownKeyword: no keyword of that name.
    """
    kid = yield Value("SELECT id FROM keywords WHERE name = ?", (name,))
    if kid is None:
        raise UnknownKeyword(f"no keyword {name}")
    used = 0
    for table in ("email_default_keywords", "subscription_keywords",
                  "membership_keywords", "membership_package_keywords"):
        used += int((yield Value(f"SELECT COUNT(*) FROM {table} WHERE keyword_id = ?",
                                 (kid,))))
    yield Later("DELETE FROM keywords WHERE id = ?", (kid,))
    return used
