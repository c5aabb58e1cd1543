# -*- test-case-name: tests.test_dispatch -*-
"""
Classification: which packages a mail to dispatch@ is about, under which
keyword, and whether it may be forwarded.

The address (C{dispatch+PKG_KEYWORD@}) decides first; what it leaves open
comes from the C{X-Distro-Tracker-Package} and C{X-Distro-Tracker-Keyword}
headers, then the vendor's rules; a message without a keyword is
C{default}. Names follow L{trackermail.validation}'s rules, the only ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from twisted.logger import Logger

from trackermail.message import has_header, header
from trackermail.validation import is_keyword, is_package_name
from trackermail.vendor.base import SkipMessage

log = Logger()

#: The most packages one message is forwarded for. Real bug tracker mail
#: names a handful (a bug filed against several packages); a header listing
#: thousands is broken or hostile, and forwarding it to every package would
#: multiply one message into a flood. The first MAX_PACKAGES distinct valid
#: names are kept, the rest dropped (and logged).
MAX_PACKAGES = 50

#: Old PTS keyword names and the keywords that replaced them.
LEGACY_KEYWORDS = {
    "katie-other": "archive",
    "buildd": "build",
    "ddtp": "translation",
    "cvs": "vcs",
}


@dataclass(frozen=True)
class Classification:
    """
    What a message is about.

    @ivar packages: the packages to forward it for, possibly none (the mail
        is then dropped, or for team mail: it is not automatic mail).
    @ivar keyword: its keyword; C{default} when nothing said otherwise.
    @ivar approved: whether it may be forwarded: always for keywords other
        than C{default}, for C{default} mail only when approved.
    """

    packages: tuple[str, ...]
    keyword: str
    approved: bool


def normalise_package(name) -> str | None:
    """
    The canonical form of a package name, or L{None} when it is not one.
    """
    if not isinstance(name, str):
        return None
    name = name.strip().lower()
    if is_package_name(name):
        return name
    return None


def normalise_keyword(keyword) -> str | None:
    """
    The canonical form of a keyword (old PTS names mapped to new ones), or
    L{None} when it is not a keyword name.
    """
    if not isinstance(keyword, str):
        return None
    keyword = keyword.strip().lower()
    if not is_keyword(keyword):
        return None
    return LEGACY_KEYWORDS.get(keyword, keyword)


def _message_id(msg) -> str:
    return header(msg, "Message-ID", "<no message-id>")[:200]


def _clean_packages(msg, names: Iterable) -> tuple[str, ...]:
    kept: list[str] = []
    seen = set()
    dropped = 0
    capped = False
    for name in names:
        package = normalise_package(name)
        if package is None:
            dropped += 1
            continue
        if package in seen:
            continue
        if len(kept) >= MAX_PACKAGES:
            capped = True
            break
        seen.add(package)
        kept.append(package)
    if dropped:
        log.info(
            "dispatch: ignored {count} invalid package names in {msgid}",
            count=dropped,
            msgid=_message_id(msg),
        )
    if capped:
        log.warn(
            "dispatch: {msgid} names more than {limit} packages;"
            " forwarding for the first {limit} only",
            msgid=_message_id(msg),
            limit=MAX_PACKAGES,
        )
    return tuple(kept)


def _vendor_classify(msg, vendor, package, keyword):
    try:
        packages, keyword = vendor.classify(msg, package, keyword)
    except SkipMessage:
        raise
    except Exception:
        # A vendor rule tripping over odd input must not lose the mail: it
        # is classified as if the vendor had no rule for it.
        log.failure(
            "dispatch: vendor {vendor} failed on {msgid}",
            vendor=getattr(vendor, "name", vendor),
            msgid=_message_id(msg),
        )
        return ((package,) if package else ()), keyword
    if isinstance(packages, str):
        packages = (packages,)
    elif packages is None:
        packages = ()
    return packages, keyword


def _approve_default(msg, vendor) -> bool:
    if has_header(msg, "X-Distro-Tracker-Approved"):
        return True
    try:
        return bool(vendor.approve_default(msg))
    except Exception:
        log.failure(
            "dispatch: vendor {vendor} approve_default failed on {msgid}",
            vendor=getattr(vendor, "name", vendor),
            msgid=_message_id(msg),
        )
        return False


def classify(msg, vendor, address_package=None, address_keyword=None) -> Classification:
    """
    Find which packages a message is about, under which keyword, and whether
    it may be forwarded.

    The address (C{dispatch+PKG_KEYWORD@}) decides first; what it leaves
    open comes from the C{X-Distro-Tracker-Package} and
    C{X-Distro-Tracker-Keyword} headers, then the vendor's rules; a message
    without a keyword is C{default}. Invalid names (from any source) count
    as absent; old PTS keyword names are mapped to their new names.

    @param vendor: an L{IVendor}.
    @raise SkipMessage: the vendor says the message must be dropped.
    """
    package = normalise_package(address_package)
    keyword = normalise_keyword(address_keyword)
    if package is None:
        package = normalise_package(header(msg, "X-Distro-Tracker-Package"))
    if keyword is None:
        keyword = normalise_keyword(header(msg, "X-Distro-Tracker-Keyword"))

    packages, keyword = _vendor_classify(msg, vendor, package, keyword)
    packages = _clean_packages(msg, packages)
    keyword = normalise_keyword(keyword) or "default"
    approved = keyword != "default" or _approve_default(msg, vendor)
    return Classification(packages=packages, keyword=keyword, approved=approved)
