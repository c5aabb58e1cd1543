# -*- test-case-name: tests.bounces.test_spamtext -*-
"""
Recognise SMTP rejections of our mail for what it I{is}, not for whom it was
sent to.

A copy refused as spam, as carrying malware, or because of who sent it (our
IP on a block list, a forwarded author's DMARC policy) says nothing about the
subscriber's address, so the bounce policy must not count it against them.
distro-tracker ignores such bounces by their SMTP text: Gmail's C{552-5.7.0
This message was blocked because its content presents a potential security
issue}, and 55x replies mentioning spam, malware, viruses or executable files.
This module does the same, more carefully:

  - The keywords are only looked for in a 55x reply: from its code to the end
    of the reply, including folded continuation lines (Postfix's C{said: 550
    5.7.1 Message\\n    rejected as spam}, DSN C{Diagnostic-Code} folding) and
    the further lines of a multi-line reply (C{552-...} then C{552 ...}).
  - Addresses, URLs and host names are removed first, so that the bounces of
    C{nospam@example.org} or C{user@antivirus.example} are still counted.
  - A reply whose enhanced status code is about the address (C{5.1.x}) or the
    mailbox (C{5.2.x}) is never a content rejection, whatever words follow.
  - 4xx replies are not rejections and are left alone. The one exception to
    "55x" is a DSN C{Diagnostic-Code: smtp; ...} whose text has no reply code
    at all (Google Groups writes its spam verdicts so).

Give it the diagnostic text of a bounce (the DSN C{Diagnostic-Code} values and
the human-readable part, or an SMTP reply as C{"550 5.7.1 text"}), not the
returned original message: that is someone else's text and may talk about
spam.
"""

from __future__ import annotations

import re

__all__ = ["is_spam_rejection"]

# Diagnostics are short; past this is returned message content, and scanning
# it all would only cost time.
_MAX_SCAN = 1 << 20

# How far a reply may run on after the line holding its code.
_MAX_CONTINUATION_LINES = 8
_MAX_WINDOW = 1000

# A 55x code standing alone: not part of a longer number or of a dotted
# status/version, and followed by a blank, a "-" (multi-line reply) or the end.
_CODE_RE = re.compile(r"(?<![\w.])55[0-9](?=[ \t-]|$)")

# The enhanced status right after the code (RFC 3463), e.g. "550-5.7.1 ".
_STATUS_RE = re.compile(r"55[0-9][ \t-]+([245])\.([0-9]{1,3})\.[0-9]{1,3}(?![\w.])")

# A DSN Diagnostic-Code of type smtp whose text has no reply code at all (the
# Google Groups wording, "smtp; Your email to group ... was rejected due to
# spam classification"): the text is still the remote server's verdict.
_BARE_DIAGNOSTIC_RE = re.compile(
    r"^[ \t]*Diagnostic-Code:[ \t]*smtp[ \t]*;[ \t]*(?![0-9]{3}(?![0-9]))(?=\S)",
    re.IGNORECASE,
)

# Each reply found costs at most _MAX_WINDOW characters of scanning; this
# bounds the work on hostile input full of "550 ".
_MAX_REPLIES = 200

_NOISE_RE = re.compile(
    r"""
      <[^<>\n]{0,300}>                 # <addr>, <url>
    | \b[a-z][a-z0-9+.-]{0,20}://\S*   # URLs
    | (?<!\S)\S*@\S*                    # bare addresses
    | (?<![\w-])[\w-]+(?:\.[\w-]+)+    # host names, dotted numbers
    """,
    re.IGNORECASE | re.VERBOSE,
)

_CONTENT_RE = re.compile(
    r"""
      spam                             # spam, anti-spam, SpamAssassin, Spamhaus
    | malware | malicious | phish
    | virus | infected | trojan
    | executable
    | content\ presents\ a\ potential\ security\ issue
    | message\ was\ blocked\ because\ its\ content
    | unsolicited | \bUBE\b | \bbulk\ mail
    | content\ rejected                # "550 5.7.1 Message content rejected"
    | not\ accepted\ for\ policy\ reasons  # Yahoo/AOL's content block (5.7.9)
    # Sender reputation: our IP or domain, not the subscriber.
    | block(?:ed)?\ using | \b(?:black|block)\ ?list | \b(?:dns)?rbls?\b
    | reputation
    # Authentication of the (forwarded) author: DMARC reject, SPF, DKIM.
    | dmarc | unauthenticated | \bspf\b | \bdkim\b
    """,
    re.IGNORECASE | re.VERBOSE,
)


def _reply_window(lines: list[str], index: int, start: int) -> str:
    """
    The reply whose code is at C{lines[index][start:]}, with the lines that
    continue it, as one line.
    """
    first = lines[index][start : start + _MAX_WINDOW]
    code, more = first[:3], first[3:4] == "-"
    parts = [first]
    size = len(first)
    for line in lines[index + 1 : index + 1 + _MAX_CONTINUATION_LINES]:
        if size >= _MAX_WINDOW:
            break
        if more and line[:3] == code and line[3:4] in ("-", " ", "\t", ""):
            # The next line of a multi-line reply; a blank after the code
            # marks its last line.
            more = line[3:4] == "-"
        elif not (line[:1].isspace() and line.strip()):
            break
        parts.append(line.strip())
        size += len(line)
    return " ".join(parts)[:_MAX_WINDOW]


def _is_content_rejection(window: str) -> bool:
    status = _STATUS_RE.match(window)
    if status is not None and status.group(2) in ("1", "2"):
        return False
    return _CONTENT_RE.search(_NOISE_RE.sub(" ", window)) is not None


def is_spam_rejection(text: str | bytes) -> bool:
    """
    Whether C{text} holds a 55x SMTP rejection of our mail as spam, malware or
    otherwise for what it is (sender reputation or authentication) rather than
    for its recipient.

    @param text: diagnostic text of a bounce, or an SMTP reply with its code.
        Bytes are read as UTF-8, with errors replaced.
    @return: C{False} for anything else, including C{"550 5.1.1 user
        unknown"}, C{"552 5.2.2 mailbox full"}, 4xx replies and text that is
        not an SMTP reply at all. Never raises.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text[:_MAX_SCAN]).decode("utf-8", "replace")
    elif not isinstance(text, str):
        return False
    lines = text[:_MAX_SCAN].splitlines()
    budget = _MAX_REPLIES
    for index, line in enumerate(lines):
        bare = _BARE_DIAGNOSTIC_RE.match(line)
        if bare and _is_content_rejection(_reply_window(lines, index, bare.end())):
            return True
        for code in _CODE_RE.finditer(line):
            if _is_content_rejection(_reply_window(lines, index, code.start())):
                return True
            budget -= 1
            if budget == 0:
                return False
    return False
