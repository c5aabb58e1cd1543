# -*- test-case-name: tests.test_news -*-
"""
News items of packages.
"""

from __future__ import annotations

from dataclasses import dataclass

from trackermail.errors import UnknownPackage
from trackermail.store.packages import ensure_package, package_id
from trackermail.store.sql import Later, Rows


@dataclass(frozen=True)
class NewsItem:
    id: int
    package: str
    title: str
    content: bytes
    content_type: str
    created_by: str
    created: float


def add_news(package: str, title: str, content: bytes, content_type: str,
             created_by: str, now: float, create_package: bool = False):
    if create_package:
        pid = yield from ensure_package(package, "source")
    else:
        pid = yield from package_id(package)
        if pid is None:
            raise UnknownPackage(package)
    yield Later(
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
