# -*- test-case-name: tests.test_dispatch -*-
"""
Dispatch: the decoration of forwarded copies, and the handlers that plan a
fan-out.

The functions up to the handlers are pure. The handlers (L{handle_dispatch},
L{handle_team}) are store programs run by the processor. A handler classifies
a message (L{trackermail.classify}), drops it when L{has_dispatch_loop} or when it is not
approved, builds each copy's headers with L{forward_headers} and the copy
itself with L{decorate} (or stores L{header_prefix} next to the original
bytes once).

Forwarded copies keep the original header block and body byte for byte, so
DKIM signatures made by the sender still verify: new headers are only ever
prepended, never merged into a re-serialised message. (A signature that
"oversigns" a header name we add, such as C{List-Id}, cannot survive any
forwarding that adds it; that is the signer's intent.)
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from email.header import Header
from typing import Iterable, Sequence
from urllib.parse import quote

from twisted.logger import Logger

from trackermail.bounces import verp
from trackermail.classify import classify
from trackermail.handling import Outcome
from trackermail.message import header_values
from trackermail.news import news_for
from trackermail.signing import make_unsubscribe_token
from trackermail.store.bounce_stats import record_sent_ids
from trackermail.store.news import add_news
from trackermail.store.outbox import enqueue
from trackermail.store.packages import package_id
from trackermail.store.subscriptions import fanout_recipients
from trackermail.store.teams import get_team, team_member_ids
from trackermail.vendor.base import SkipMessage

__all__ = [
    "has_dispatch_loop",
    "forward_headers",
    "header_prefix",
    "decorate",
]

log = Logger()

# RFC 5322 field names: printable ASCII except ":".
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+\Z")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")
# RFC 5322 2.1.1: a line MUST NOT exceed 998 characters.
_MAX_LINE = 998


def has_dispatch_loop(msg, fqdn: str) -> bool:
    """
    Whether the message was already forwarded by this tracker (it carries
    C{X-Loop: dispatch@FQDN}): such mail is dropped, not forwarded again.
    """
    own = f"dispatch@{fqdn}".lower()
    for value in header_values(msg, "X-Loop"):
        if value.strip().strip("<>").strip().lower() == own:
            return True
    return False


def forward_headers(
    fqdn: str,
    package: str | None,
    keyword: str,
    *,
    team: str | None = None,
    direct: bool = True,
    vendor_headers: Sequence[tuple[str, str]] = (),
    unsubscribe_url: str | None = None,
) -> list[tuple[str, str]]:
    """
    The headers of a forwarded copy, in the order they are prepended.

    @param package: the package it is forwarded for, or L{None} for mail to
        a team (no C{X-Distro-Tracker-Package}, no C{List-Id}).
    @param team: the team slug, for the copies sent to a team's members.
    @param direct: whether the copy goes to direct subscribers of the
        package (they get C{Precedence: list} and C{List-Unsubscribe}).
    @param vendor_headers: the vendor's C{extra_headers}, appended last.
    @param unsubscribe_url: an HTTP(S) one-click unsubscribe URL (RFC 8058),
        offered before the C{mailto:} form.
    """
    headers = [("X-Loop", f"dispatch@{fqdn}")]
    if package:
        headers.append(("X-Distro-Tracker-Package", package))
    headers.append(("X-Distro-Tracker-Keyword", keyword))
    if package:
        headers.append(("List-Id", f"<{package}.{fqdn}>"))
    if direct and package:
        headers.append(("Precedence", "list"))
        mailto = (
            f"<mailto:control@{fqdn}?body=unsubscribe%20{quote(package, safe='')}>"
        )
        if unsubscribe_url:
            headers.append(("List-Unsubscribe", f"<{unsubscribe_url}>, {mailto}"))
            headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
        else:
            headers.append(("List-Unsubscribe", mailto))
    if team:
        headers.append(("X-Distro-Tracker-Team", team))
    headers.extend(vendor_headers)
    return headers


def line_ending(raw: bytes) -> bytes:
    """
    The line ending the message uses (that of its first line), CRLF when it
    has no line break at all.
    """
    end = raw.find(b"\n")
    if end > 0 and raw[end - 1 : end] == b"\r":
        return b"\r\n"
    if end >= 0:
        return b"\n"
    return b"\r\n"


def _message_start(raw: bytes) -> int:
    # A file from an mbox or a pipe may begin with the "From sender date"
    # envelope line, which is no header: the copy's headers must go after
    # it is removed, or the copy would start with a malformed header.
    if raw.startswith(b"From "):
        end = raw.find(b"\n")
        return len(raw) if end < 0 else end + 1
    return 0


def _sanitise_value(value) -> str:
    if value is None:
        value = ""
    value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    # CR and LF would start a new header (header injection); other controls
    # are invalid in header text.
    return _CONTROLS.sub(" ", value).strip()


def _render_header(name: str, value, eol: bytes) -> bytes:
    bname = name.encode("ascii", "strict") if name.isascii() else b""
    if not _FIELD_NAME.match(bname):
        raise ValueError(f"invalid header name {name!r}")
    text = _sanitise_value(value)
    if (
        text.isascii()
        and "=?" not in text
        and len(name) + 2 + len(text) <= _MAX_LINE
    ):
        return bname + b": " + text.encode("ascii") + eol
    # Non-ASCII text, text that would read as an encoded word, or a value
    # too long for one line: RFC 2047 encoded words, folded.
    encoded = Header(text, "utf-8", header_name=name).encode(
        linesep=eol.decode("ascii")
    )
    return bname + b": " + encoded.encode("ascii") + eol


def header_prefix(raw: bytes, headers: Iterable[tuple[str, str]]) -> bytes:
    """
    The header lines L{decorate} prepends to C{raw}, in C{raw}'s own line
    ending.

    Storing this prefix and the original bytes separately lets a fan-out
    keep one copy of the message for every variant of its headers.

    @raise ValueError: a header name is not a valid field name (a
        programming error: names come from our own code).
    """
    eol = line_ending(raw)
    return b"".join(_render_header(name, value, eol) for name, value in headers)


def decorate(raw: bytes, headers: Iterable[tuple[str, str]]) -> bytes:
    """
    The forwarded copy: C{headers} prepended to the original message.

    The original header block and body follow unchanged, byte for byte (so
    DKIM signatures still verify). Header values are sanitised: CR, LF and
    other control characters become spaces, non-ASCII text is RFC 2047
    encoded. A leading mbox C{From } line is not part of the message and is
    left out. C{raw} is copied once, into the result.
    """
    prefix = header_prefix(raw, headers)
    start = _message_start(raw)
    if start:
        return b"".join((prefix, memoryview(raw)[start:]))
    return prefix + raw


# ---------------------------------------------------------------------------
# The handlers: fan-out planning for dispatch@ and team+SLUG@ mail. These are
# store programs (see trackermail.processing): they read who wants the mail
# and write one outbox body plus a delivery row per recipient, in the
# processor's transaction.


def _verp_signer(ctx):
    """
    sign(email, email_id) -> the VERP envelope sender of today's copy. Each
    signer draws its own copy token, so every copy of the fan-out (one
    per recipient) has an identity its bounces name.
    """
    day = datetime.fromtimestamp(ctx.now, timezone.utc).date()
    return verp.signer(day, ctx.config.tracker.secret_key, ctx.fqdn)


def _unsubscribe_url(ctx, package: str, email: str) -> str | None:
    public = ctx.config.http.public_url
    if not public or not package:
        return None
    token = make_unsubscribe_token(ctx.config.tracker.secret_key, package, email, int(ctx.now))
    return f"{public.rstrip('/')}/unsubscribe/{token}"


def plan_deliveries(ctx, raw: bytes, msg, recipients, package, keyword):
    """
    The C{(recipient, envelope sender, header prefix)} of every copy.
    Copies with the same headers share one prefix object; with one-click
    unsubscribe each direct copy gets its own signed URL.
    """
    vendor = ctx.vendor
    prefixes: dict = {}
    deliveries = []
    sign = _verp_signer(ctx)
    for email, email_id, team in recipients:
        url = _unsubscribe_url(ctx, package, email) if team is None else None
        key = (team, url)
        prefix = prefixes.get(key)
        if prefix is None:
            try:
                extra = list(vendor.extra_headers(msg, package, keyword, team)) if vendor else []
            except Exception:
                log.failure("vendor extra_headers failed")
                extra = []
            headers = forward_headers(ctx.fqdn, package, keyword, team=team,
                                      direct=team is None, vendor_headers=extra,
                                      unsubscribe_url=url)
            prefix = header_prefix(raw, headers)
            if url is None:
                prefixes[key] = prefix
        deliveries.append((email, sign(email, email_id), prefix))
    return deliveries


def _about(packages: Sequence[str], keyword: str | None) -> tuple[str, dict]:
    """
    C{dpkg/bts} (a few packages, then how many more) for a log line, and
    the C{package}/C{keyword} fields that say the same for tools.
    """
    names = [p for p in packages if p]
    shown = [f"{p}/{keyword}" if keyword else p for p in names[:3]]
    if len(names) > 3:
        shown.append(f"{len(names) - 3} more")
    fields = {"package": ",".join(names), "keyword": keyword or ""}
    return ", ".join(shown) or (keyword or ""), fields


def handle_dispatch(incoming, ctx):
    """
    Store program for mail to C{dispatch[+PKG[_KW]]@} (and unqualified
    C{PKG[_KW]@}): classify, record news, fan out. Every drop says why and
    about what (fields C{package} and C{keyword}).
    """

    msg = incoming.msg
    route = incoming.route
    address_package = getattr(route, "package", None)
    address_keyword = getattr(route, "keyword", None)
    _, addressed = _about([address_package or ""], address_keyword)
    if has_dispatch_loop(msg, ctx.fqdn):
        return Outcome("dropped", f"a loop: it carries X-Loop: dispatch@{ctx.fqdn}", addressed)
    try:
        found = classify(msg, ctx.vendor, address_package, address_keyword)
    except SkipMessage as e:
        return Outcome("dropped", f"the vendor rules skip it ({e})", addressed)
    text, about = _about(found.packages, found.keyword)
    if not found.packages:
        return Outcome("dropped", "no package could be found for it", about)
    if not found.approved:
        return Outcome("dropped", f"default mail that is not approved ({text})",
                       {"packages": list(found.packages), **about})

    news_count = 0
    for draft in news_for(msg, incoming.raw, found, ctx.vendor):
        if not draft.create_package:
            if (yield from package_id(draft.package)) is None:
                continue
        yield from add_news(draft.package, draft.title, draft.content,
                                draft.content_type, draft.created_by, ctx.now,
                                create_package=draft.create_package)
        news_count += 1

    raw = incoming.raw
    seen: set[int] = set()
    deliveries = []
    for package in found.packages:
        recipients = yield from fanout_recipients(package, found.keyword)
        recipients = [r for r in recipients if r[1] not in seen]
        seen.update(r[1] for r in recipients)
        deliveries.extend(plan_deliveries(ctx, raw, msg, recipients, package, found.keyword))
    if deliveries:
        yield from enqueue(incoming.whole, deliveries, ctx.now)
        yield from record_sent_ids(sorted(seen), ctx.today)
    return Outcome(
        "forwarded" if deliveries else "dropped",
        f"to {len(deliveries)} recipients" if deliveries else f"nobody wants {text}",
        {"packages": list(found.packages), **about,
         "recipients": len(deliveries), "news": news_count},
    )


def handle_team(incoming, ctx):
    """
    Store program for mail to C{team+SLUG@}: people writing to a team reach
    its unmuted members (keyword C{contact}); automatic mail about a package
    is dropped (it reaches team members through dispatch).
    """

    msg = incoming.msg
    slug = getattr(incoming.route, "team", None) or ""
    where = {"team": slug, "keyword": "contact"}
    if has_dispatch_loop(msg, ctx.fqdn):
        return Outcome("dropped", f"a loop: it carries X-Loop: dispatch@{ctx.fqdn}", where)
    team = yield from get_team(slug)
    if team is None:
        return Outcome("dropped", f"there is no team {slug!r}", where)
    try:
        found = classify(msg, ctx.vendor)
    except SkipMessage as e:
        return Outcome("dropped", f"the vendor rules skip it ({e})", where)
    if found.packages:
        text, about = _about(found.packages, found.keyword)
        return Outcome("dropped",
                       f"automatic mail about a package ({text}): it reaches teams through dispatch",
                       {"packages": list(found.packages), **about, "team": slug})
    rows = yield from team_member_ids(slug)
    deliveries = plan_deliveries(ctx, incoming.raw, msg, [(e, i, slug) for e, i in rows],
                                 None, "contact")
    if deliveries:
        yield from enqueue(incoming.whole, deliveries, ctx.now)
        yield from record_sent_ids([i for _, i in rows], ctx.today)
    if not deliveries:
        return Outcome("dropped", f"nobody in team {slug} wants it (no unmuted members)",
                       {**where, "recipients": 0})
    return Outcome("forwarded", f"to {len(deliveries)} members of {slug}",
                   {**where, "recipients": len(deliveries)})
