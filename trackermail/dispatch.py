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
from itertools import chain
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
from trackermail.signing import subscription_signer
from trackermail.store.bounce_stats import record_sent_ids
from trackermail.store.news import add_news
from trackermail.store.outbox import enqueue
from trackermail.store.packages import package_id
from trackermail.store.subscriptions import fanout_targets
from trackermail.store.teams import get_team, team_member_ids
from trackermail.vendor.base import SkipMessage

__all__ = [
    "has_dispatch_loop",
    "forward_headers",
    "unsubscribe_headers",
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
    unsubscribe_token: str | None = None,
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
    @param unsubscribe_token: the subscription's token (L{trackermail.signing}):
        the C{mailto:} then unsubscribes at once, without a confirmation.
    """
    head, tail = _shared_headers(fqdn, package, keyword, team, direct, vendor_headers)
    unsubscribe = []
    if direct and package:
        unsubscribe = unsubscribe_headers(fqdn, package, unsubscribe_token, unsubscribe_url)
    return head + unsubscribe + tail


def _shared_headers(fqdn, package, keyword, team, direct, vendor_headers):
    """The headers before and after C{List-Unsubscribe}: the same for every copy."""
    head = [("X-Loop", f"dispatch@{fqdn}")]
    if package:
        head.append(("X-Distro-Tracker-Package", package))
    head.append(("X-Distro-Tracker-Keyword", keyword))
    if package:
        head.append(("List-Id", f"<{package}.{fqdn}>"))
    if direct and package:
        head.append(("Precedence", "list"))
    tail = []
    if team:
        tail.append(("X-Distro-Tracker-Team", team))
    tail.extend(vendor_headers)
    return head, tail


def unsubscribe_headers(fqdn: str, package: str, token: str | None = None,
                        url: str | None = None) -> list[tuple[str, str]]:
    """
    C{List-Unsubscribe} (and C{List-Unsubscribe-Post} with a one-click
    C{url}) of a copy to a direct subscriber of C{package}. With the
    subscription's C{token} the C{mailto:} asks for C{unsubscribe PKG TOKEN},
    which the control bot acts on at once; without it, for
    C{unsubscribe PKG}, which needs a confirmation.
    """
    name = quote(package, safe="")
    if token:
        mailto = f"<mailto:control@{fqdn}?subject=unsubscribe%20{name}%20{token}>"
    else:
        mailto = f"<mailto:control@{fqdn}?body=unsubscribe%20{name}>"
    if url:
        return [("List-Unsubscribe", f"<{url}>, {mailto}"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
    return [("List-Unsubscribe", mailto)]


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


class _UnsubscribeLines:
    """
    The C{List-Unsubscribe} lines of direct copies of one fan-out: the
    parts every copy shares are made once, each copy adds its token.
    """

    def __init__(self, ctx, raw: bytes, package: str):
        self.sign = subscription_signer(ctx.config.tracker.secret_key, package)
        self.raw = raw
        self.fqdn, self.package = ctx.fqdn, package
        self.public = ctx.config.http.public_url.rstrip("/")
        self.eol = line_ending(raw)
        mailto = f"<mailto:control@{ctx.fqdn}?subject=unsubscribe%20{quote(package, safe='')}%20"
        url = f"<{self.public}/unsubscribe/" if self.public else None
        self.fast = mailto.isascii() and (url is None or url.isascii())
        self.mailto = mailto.encode("ascii", "replace")
        self.url = url.encode("ascii", "replace") if url else None
        self.post = header_prefix(raw, [("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")])

    def lines(self, binding) -> bytes:
        token = self.sign(binding.subscription_id, binding.email_lower, binding.salt)
        tok = token.encode("ascii")
        if self.url is None:
            value = self.mailto + tok + b">"
        else:
            value = b"".join((self.url, tok, b">, ", self.mailto, tok, b">"))
        if not self.fast or len(value) > _MAX_LINE - 18:
            url = f"{self.public}/unsubscribe/{token}" if self.public else None
            return header_prefix(self.raw, unsubscribe_headers(self.fqdn, self.package,
                                                               token, url))
        line = b"List-Unsubscribe: " + value + self.eol
        return line + self.post if self.url is not None else line


def plan_deliveries(ctx, raw: bytes, msg, recipients, package, keyword):
    """
    The C{(recipient, envelope sender, header prefix)} of every copy, one
    per recipient, made as they are taken: a fan-out to 100,000 people is
    stored a chunk at a time and never held whole.

    C{recipients} are C{(email, email_id, team[, binding])}: a direct
    subscriber's copy with a subscription binding
    (L{trackermail.store.subscriptions.Binding}) gets C{List-Unsubscribe}
    with its own token. The headers all copies share are rendered once per
    team; a token adds one HMAC and a line to its copy.
    """
    vendor = ctx.vendor
    shared: dict = {}
    unsubscribe = _UnsubscribeLines(ctx, raw, package) if package else None
    sign = _verp_signer(ctx)
    for recipient in recipients:
        email, email_id, team = recipient[:3]
        binding = recipient[3] if len(recipient) > 3 else None
        parts = shared.get(team)
        if parts is None:
            try:
                extra = list(vendor.extra_headers(msg, package, keyword, team)) if vendor else []
            except Exception:
                log.failure("vendor extra_headers failed")
                extra = []
            head, tail = _shared_headers(ctx.fqdn, package, keyword, team, team is None, extra)
            plain = []
            if team is None and package:
                plain = unsubscribe_headers(ctx.fqdn, package)
            parts = shared[team] = (header_prefix(raw, head), header_prefix(raw, tail),
                                    header_prefix(raw, head + plain + tail))
        if binding is not None and team is None and unsubscribe is not None:
            prefix = b"".join((parts[0], unsubscribe.lines(binding), parts[1]))
        else:
            prefix = parts[2]
        yield (email, sign(email, email_id), prefix)


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
    plans = []
    count = 0
    for package in found.packages:
        recipients = yield from fanout_targets(package, found.keyword)
        recipients = [r for r in recipients if r[1] not in seen]
        seen.update(r[1] for r in recipients)
        if recipients:
            count += len(recipients)
            plans.append(plan_deliveries(ctx, raw, msg, recipients, package, found.keyword))
    if count:
        yield from enqueue(incoming.whole, chain.from_iterable(plans), ctx.now,
                           origin=ctx.origin)
        yield from record_sent_ids(sorted(seen), ctx.today)
    return Outcome(
        "forwarded" if count else "dropped",
        f"to {count} recipients" if count else f"nobody wants {text}",
        {"packages": list(found.packages), **about,
         "recipients": count, "news": news_count},
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
    if not rows:
        return Outcome("dropped", f"nobody in team {slug} wants it (no unmuted members)",
                       {**where, "recipients": 0})
    deliveries = plan_deliveries(ctx, incoming.raw, msg, [(e, i, slug) for e, i in rows],
                                 None, "contact")
    yield from enqueue(incoming.whole, deliveries, ctx.now, origin=ctx.origin)
    yield from record_sent_ids([i for _, i in rows], ctx.today)
    return Outcome("forwarded", f"to {len(rows)} members of {slug}",
                   {**where, "recipients": len(rows)})
