# -*- test-case-name: tests.test_news -*-
"""
News from mail, the pure part: which classified messages become news items
of which packages.

The vendor decides which mail is news (for Debian: accepted sourceful
uploads, C{dak rm} source removals, testing-watch mail); this module turns
its verdict into L{NewsDraft}s the handler stores. A news item keeps the
whole message (C{message/rfc822}); its title is the decoded Subject.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from twisted.logger import Logger

from trackermail.classify import MAX_PACKAGES, Classification, normalise_package
from trackermail.message import header, parse_address, sender_name
from trackermail.vendor.base import IVendor, load_vendor

log = Logger()

CONTENT_TYPE = "message/rfc822"

#: Longest title and author kept (characters); longer values are cut with
#: an ellipsis so a hostile Subject cannot bloat every news listing.
MAX_TITLE = 255
MAX_CREATED_BY = 255

_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class NewsDraft:
    """
    A news item to store.

    @ivar content: the raw message, shared (not copied) between drafts.
    @ivar create_package: create the package name when it is unknown;
        otherwise a draft for an unknown package is dropped by the store.
    """

    package: str
    title: str
    content: bytes
    content_type: str
    created_by: str
    create_package: bool


def _one_line(text: str, limit: int) -> str:
    text = _SPACES.sub(" ", text).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "\u2026"
    return text


def _author(value: str | None) -> str:
    if not value:
        return ""
    name, address = parse_address(value)
    return name or address or value.strip()


def news_title(msg, created_by: str) -> str:
    """
    The title of a news item made from C{msg}: its decoded Subject, else
    C{Email news from SENDER}.
    """
    subject = _one_line(header(msg, "Subject"), MAX_TITLE)
    if subject:
        return subject
    return _one_line(f"Email news from {created_by}", MAX_TITLE)


def news_for(msg, raw: bytes, classification: Classification, vendor_name) -> list[NewsDraft]:
    """
    The news items a classified message makes, possibly none.

    @param raw: the message as received; stored as the items' content.
    @param vendor_name: the vendor's name (C{[tracker] vendor}) or the
        L{IVendor} itself.
    """
    vendor = vendor_name if IVendor.providedBy(vendor_name) else load_vendor(vendor_name)
    try:
        sources = vendor.news(msg, classification.packages, classification.keyword)
    except Exception:
        log.failure(
            "news: vendor {vendor} failed on {msgid}",
            vendor=getattr(vendor, "name", vendor),
            msgid=header(msg, "Message-ID", "<no message-id>")[:200],
        )
        return []
    sender = _one_line(sender_name(msg), MAX_CREATED_BY) or "unknown"
    title = news_title(msg, sender)
    drafts: list[NewsDraft] = []
    seen = set()
    for source in sources:
        package = normalise_package(source.package)
        if package is None or package in seen:
            continue
        if len(drafts) >= MAX_PACKAGES:
            log.warn(
                "news: {msgid} is news for more than {limit} packages;"
                " keeping the first {limit}",
                msgid=header(msg, "Message-ID", "<no message-id>")[:200],
                limit=MAX_PACKAGES,
            )
            break
        seen.add(package)
        created_by = _one_line(_author(source.created_by), MAX_CREATED_BY) or sender
        drafts.append(
            NewsDraft(
                package=package,
                title=title,
                content=raw,
                content_type=CONTENT_TYPE,
                created_by=created_by,
                create_package=source.create_package,
            )
        )
    return drafts
