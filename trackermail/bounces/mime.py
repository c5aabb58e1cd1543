# -*- test-case-name: tests.bounces.test_analyzer -*-
"""
Safe access to the parts of a message that may be a bounce: parsing,
MIME parts and their structure, addresses. Headers and text are read with
L{trackermail.message}, the one reader of mail.

Nothing in here raises on odd input: broken MIME, undecodable headers and
missing parts give a defined, possibly empty, result.
"""

from __future__ import annotations

import email.policy
import re
from email.message import EmailMessage, Message
from email.parser import BytesParser, Parser
from typing import Iterator, Optional

from trackermail.message import header_values
from trackermail.message import part_text as message_part_text

# Guards against pathological input.
MAX_PARTS = 500
MAX_DEPTH = 30
MAX_TEXT = 200_000


def parse_message(msg) -> Message:
    """
    Turn what the caller gave into a message; never raise.

    Bytes and text are parsed with the C{compat32} policy: headers stay
    strings (this module decodes them itself), and building the header
    objects of the default policy on every lookup cost more than half the
    analysis time.
    """
    if isinstance(msg, Message):
        return msg
    try:
        if isinstance(msg, (bytes, bytearray, memoryview)):
            return BytesParser(policy=email.policy.compat32).parsebytes(bytes(msg))
        if isinstance(msg, str):
            return Parser(policy=email.policy.compat32).parsestr(msg)
    except Exception:
        pass
    return EmailMessage()


def header(part: Message, name: str) -> str:
    """The first value of header C{name} as text, or C{""}."""
    values = header_values(part, name)
    return values[0].strip() if values else ""


def unfold(text: str) -> str:
    return re.sub(r"\r?\n[ \t]+", " ", text).strip()


def content_type(part: Message) -> str:
    try:
        return part.get_content_type().lower()
    except Exception:
        return "text/plain"


def part_bytes(part: Message) -> bytes:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if isinstance(payload, bytes):
        return payload[:MAX_TEXT]
    try:
        raw = part.get_payload()
    except Exception:
        return b""
    if isinstance(raw, str):
        return raw[:MAX_TEXT].encode("utf-8", "surrogateescape")
    return b""


def part_text(part: Message) -> str:
    text = message_part_text(part, MAX_TEXT)
    if content_type(part) == "text/html":
        text = _html_to_text(text)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _html_to_text(html: str) -> str:
    html = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", html)
    html = re.sub(r"(?i)<\s*(br|/p|/div|/tr|/li|p|div|tr|li)\b[^>]*>", "\n", html)
    html = re.sub(r"<[^>]*>", " ", html)
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&nbsp;", " "),
                         ("&quot;", '"'), ("&#39;", "'"), ("&amp;", "&")):
        html = html.replace(entity, char)
    return html


def is_flat(part: Message) -> bool:
    try:
        return isinstance(part.get_payload(), str)
    except Exception:
        return False


_BOUNDARY_LINE = re.compile(rb"^--([^\s]{6,200}?)(--)?[ \t]*\r?$", re.M)


def repair_multipart(msg: Message) -> Message:
    """
    A multipart message whose declared boundary never appears in the body
    (mangled by a relay or an anonymiser) parses as one blob.  When the
    body does have boundary-like lines, parse it again with that boundary.
    """
    try:
        if not msg.get_content_maintype() == "multipart" or not is_flat(msg):
            return msg
        body = part_bytes(msg)
        lines = [m for m in _BOUNDARY_LINE.findall(body) if m[0].strip(b"-=_")]
        if lines:
            counts: dict = {}
            for m in lines:
                counts[m[0]] = counts.get(m[0], 0) + 1
            lines = [max(lines, key=lambda m: counts[m[0]])]
        if not lines:
            # Some relays indent the boundary lines.
            lines = re.findall(rb"^[ \t]+--([^\s]{6,200}?)(--)?[ \t]*\r?$", body, re.M)
            if not lines:
                return msg
            body = re.sub(rb"(?m)^[ \t]+(--" + re.escape(lines[0][0]) + rb")", rb"\1", body)
        boundary = lines[0][0].decode("ascii", "replace")
        if '"' in boundary:
            return msg
        head = []
        for key, value in msg.raw_items():
            if str(key).lower() == "content-type":
                value = re.sub(r'(?is)boundary\s*=\s*("[^"]*"|[^;\s]*)', "", str(value))
                value = value.rstrip().rstrip(";") + '; boundary="%s"' % boundary
            head.append("%s: %s" % (key, unfold(str(value))))
        raw = "\n".join(head).encode("utf-8", "surrogateescape") + b"\n\n" + body
        fixed = BytesParser(policy=email.policy.compat32).parsebytes(raw)
        payload = fixed.get_payload()
        if isinstance(payload, list) and payload:
            return fixed
    except Exception:
        pass
    return msg


def walk(msg: Message) -> Iterator[tuple[Message, int]]:
    """
    Yield (part, depth-inside-attached-messages) for every MIME part,
    iteratively, bounded in count and depth.
    """
    stack = [(msg, 0, 0)]
    count = 0
    while stack and count < MAX_PARTS:
        part, inside, depth = stack.pop()
        count += 1
        yield part, inside
        if depth >= MAX_DEPTH:
            continue
        try:
            if not part.is_multipart():
                continue
            children = part.get_payload()
        except Exception:
            continue
        if not isinstance(children, list):
            continue
        ctype = content_type(part)
        nested = inside + (1 if ctype in ("message/rfc822", "message/global") else 0)
        for child in reversed(children):
            if isinstance(child, Message):
                stack.append((child, nested, depth + 1))


ADDRESS = re.compile(
    r"(?<![\w.!#$%&'*+/=?^`{|}~-])"
    r"([A-Za-z0-9!#$%&'*+/=?^_`{|}~-][A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+)"
)


def clean_address(text: str) -> Optional[str]:
    """
    The addr-spec in C{text} ("rfc822; <a@b>", "Name <a@b>", "a@b"), or None.
    """
    if not text:
        return None
    text = text.strip()
    if ";" in text:
        kind, rest = text.split(";", 1)
        if "@" in rest or not "@" in kind:
            text = rest
    text = text.strip().strip("<>").strip()
    if "<" in text:
        inner = re.search(r"<([^<>]*@[^<>]*)>", text)
        if inner:
            text = inner.group(1)
    if text.startswith("@") and ":" in text:
        text = text.split(":", 1)[1]
    text = text.replace('"', "")
    m = ADDRESS.search(text)
    if not m:
        return None
    return m.group(1).strip(".")


def addresses_in(text: str) -> list[str]:
    # X.400-style Exchange lines: "c=US;a= ;p=ORG;dda:SMTP=user@host;"
    text = re.sub(r"(?i)\bSMTP=", "SMTP: ", text)
    out = []
    for m in ADDRESS.finditer(text):
        addr = m.group(1).strip(".")
        if "@" in addr:
            out.append(addr)
    return out

