# -*- test-case-name: tests.vendor.test_debian -*-
"""
The C{debian} vendor: the rules tracker.debian.org applies.

Mail is recognised by the headers Debian's services put on it:

 - the bug tracker (C{X-Loop: owner@bugs.debian.org}): the package is
   C{X-Debian-PR-Source}, else C{X-Debian-PR-Package} (both may name several
   packages); the keyword is C{bts-control} for control transcripts
   (C{X-Debian-PR-Message: transcript ...}), else C{bts}. A package suggested
   by the address is kept; the bug tracker's packages replace it only when
   they include it.
 - the archive (C{X-Debian: DAK}): C{Accepted} uploads are C{upload-source}
   when the body lists a C{.dsc}, else C{upload-binary}; other archive mail is
   C{archive}; C{X-DAK: dak rm} removals go to every source package listed in
   the body's C{pkg | version | arch} lines.
 - build daemons (C{X-Debian: buildd.debian.org}): C{build}, package from
   C{X-Debian-Package}.
 - testing autoremovals (C{X-Debian: release.debian.org/autoremovals}):
   C{summary}, package from C{X-Debian-Package}.
 - testing watch (C{X-Testing-Watch-Package}): C{summary}.
 - VCS commit mail (C{X-GitLab-Project-Path}, C{X-GitLab-Project} or
   C{X-Git-Repo}): the last path component without C{.git} is the package
   (unless one was suggested), keyword C{vcs} (unless one was suggested).

C{default} mail is approved when it carries C{X-Bugzilla-Product}.
"""

from __future__ import annotations

import re

from zope.interface import implementer

from trackermail.message import body_text, has_header, header, header_values
from trackermail.vendor.base import IVendor, NewsSource

BTS_LOOP = "owner@bugs.debian.org"
DAK = "dak"
BUILDD = "buildd.debian.org"
AUTOREMOVALS = "release.debian.org/autoremovals"

_ACCEPTED = re.compile(r"^Accepted|ACCEPTED")
_ACCEPTED_SUBJECT = re.compile(r"^Accepted\s+(\S+)\s+\S+\s+\(([^)]*)\)")
_DSC = re.compile(r"\.dsc\s*$", re.MULTILINE)
_RM_LINE = re.compile(
    r"^[ \t]*(\S+)[ \t]*\|[ \t]*(\S+)[ \t]*\|([^|\n]*)$", re.MULTILINE
)
_CHANGED_BY = re.compile(r"^Changed-By:[ \t]*(.+?)[ \t]*$", re.MULTILINE)


def _lowered(values) -> set[str]:
    return {v.strip().lower() for v in values}


def _split_packages(value: str) -> tuple[str, ...]:
    names = []
    for word in value.split():
        # debbugs writes source packages as "src:NAME" in X-Debian-PR-Package.
        if word.startswith("src:"):
            word = word[4:]
        if word:
            names.append(word)
    return tuple(names)


def repository_package(path: str) -> str | None:
    """
    The package named by a repository path: C{debian/hello.git} -> C{hello}.
    """
    path = path.strip().rstrip("/")
    name = path.rsplit("/", 1)[-1]
    if name.endswith(".git"):
        name = name[: -len(".git")]
    return name or None


def source_removals(body: str) -> list[tuple[str, str]]:
    """
    The C{(package, version)} of each source package a C{dak rm} mail lists.

    dak writes one line per removed package: C{name | version | archs}; only
    lines whose architecture list contains C{source} remove a source package.
    """
    found = []
    for match in _RM_LINE.finditer(body):
        architectures = {a.strip() for a in match.group(3).split(",")}
        if "source" in architectures:
            found.append((match.group(1), match.group(2)))
    return found


def _bts_keyword(msg) -> str:
    if header(msg, "X-Debian-PR-Message").startswith("transcript"):
        return "bts-control"
    return "bts"


def _classify_bts(msg, package, keyword):
    listed = _split_packages(header(msg, "X-Debian-PR-Source"))
    if not listed:
        listed = _split_packages(header(msg, "X-Debian-PR-Package"))
    if package is None:
        return listed, _bts_keyword(msg)
    if package.lower() in {name.lower() for name in listed}:
        # The address agrees with the bug tracker: the tracker knows better
        # which kind of bug mail this is.
        return (package,), _bts_keyword(msg)
    # Mail the bug tracker sent to another package's address (a bug
    # reassigned, a package in X-Debian-PR-Package but not the addressee's
    # source): it is about the addressed package, never about the others,
    # or it would be forwarded several times.
    return (package,), keyword or _bts_keyword(msg)


def _accepted_package(subject: str) -> str | None:
    match = _ACCEPTED_SUBJECT.match(subject)
    return match.group(1) if match else None


def _classify_dak(msg, package, keyword):
    package = header(msg, "X-Debian-Package") or package
    subject = header(msg, "Subject")
    is_rm = header(msg, "X-DAK").split() == ["dak", "rm"]
    body = None
    if _ACCEPTED.search(subject):
        body = body_text(msg)
        keyword = "upload-source" if _DSC.search(body) else "upload-binary"
        package = package or _accepted_package(subject)
    else:
        keyword = "archive"
    if is_rm:
        if body is None:
            body = body_text(msg)
        removed = tuple(name for name, _ in source_removals(body))
        if removed:
            return removed, keyword
    return ((package,) if package else ()), keyword


@implementer(IVendor)
class DebianVendor:
    name = "debian"

    def classify(self, msg, package, keyword):
        git_repo = (
            header(msg, "X-GitLab-Project-Path")
            or header(msg, "X-GitLab-Project")
            or header(msg, "X-Git-Repo")
        )
        if git_repo:
            if not package:
                package = repository_package(git_repo)
            if not keyword:
                keyword = "vcs"

        x_debian = _lowered(header_values(msg, "X-Debian"))
        testing_watch = header(msg, "X-Testing-Watch-Package")

        if BTS_LOOP in _lowered(header_values(msg, "X-Loop")):
            return _classify_bts(msg, package, keyword)
        if DAK in x_debian:
            return _classify_dak(msg, package, keyword)
        if BUILDD in x_debian:
            package = header(msg, "X-Debian-Package") or package
            return ((package,) if package else ()), "build"
        if AUTOREMOVALS in x_debian:
            package = header(msg, "X-Debian-Package") or package
            return ((package,) if package else ()), "summary"
        if testing_watch:
            return (testing_watch,), "summary"
        return ((package,) if package else ()), keyword

    def approve_default(self, msg) -> bool:
        return has_header(msg, "X-Bugzilla-Product")

    def extra_headers(self, msg, package, keyword, team) -> list[tuple[str, str]]:
        headers = [("X-Debian", "tracker.debian.org")]
        if package:
            headers.append(("X-Debian-Package", package))
            # X-PTS-*: for filters written for the old Package Tracking System.
            headers.append(("X-PTS-Package", package))
        if keyword:
            headers.append(("X-PTS-Keyword", keyword))
        return headers

    def news(self, msg, packages, keyword) -> list[NewsSource]:
        x_debian = _lowered(header_values(msg, "X-Debian"))
        if DAK in x_debian:
            return self._archive_news(msg, packages, keyword)
        testing_watch = header(msg, "X-Testing-Watch-Package")
        if testing_watch:
            return [NewsSource(testing_watch)]
        return []

    def _archive_news(self, msg, packages, keyword) -> list[NewsSource]:
        subject = header(msg, "Subject")
        x_dak = header(msg, "X-DAK").split()
        # Only the "Accepted PKG VERSION (ARCHS) into SUITE" announcement is
        # news: the maintainer's "..._source.changes ACCEPTED" copy of the
        # same upload would make a second item.
        if subject.startswith("Accepted"):
            match = _ACCEPTED_SUBJECT.match(subject)
            architectures = match.group(2).split() if match else []
            if "source" not in architectures and keyword != "upload-source":
                return []
            package = _accepted_package(subject) or (
                packages[0] if packages else None
            )
            if not package:
                return []
            created_by = None
            if x_dak == ["dak", "process-upload"]:
                found = _CHANGED_BY.search(body_text(msg))
                if found:
                    created_by = found.group(1)
            return [NewsSource(package, create_package=True, created_by=created_by)]
        if x_dak == ["dak", "rm"]:
            return [NewsSource(name) for name, _ in source_removals(body_text(msg))]
        return []


vendor = DebianVendor()
