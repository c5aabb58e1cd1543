# -*- test-case-name: tests.bounces.test_analyzer -*-
"""
Bounce detection in the style of Lamson's ``lamson.bounce`` module, on
Python's ``email`` package, made robust for mail seen in the wild.

``detect(msg)`` returns a L{BounceAnalyzer}.  Its ``score`` starts as
Lamson's header score (one point per DSN header found anywhere in the
message, plus the fraction of that header's values matching its pattern,
divided by twice the number of headers) and is then corrected by what the
analyzer recognised:

  - a report that is not a failure (a success DSN, an ARF abuse report, an
    auto-reply or vacation notice, an Amazon SES delivery notification)
    scores 0;
  - a failure report the analyzer recognised (a delivery-status part with
    failed or delayed recipients, or one of the common non-DSN formats:
    qmail, Exim, Postfix, Sendmail, Exchange, Gmail, Yahoo, Amazon SES ...)
    scores at least 0.5;
  - anything else scores at most 0.25, below the default threshold.

So ``probable()`` (threshold 0.3) answers "is this a bounce?".

Hard or soft is decided per failed recipient, most reliable signal first:
the DSN ``Action`` (``delayed`` is soft), the RFC 3463 status class (5 hard,
4 soft), the SMTP reply code (5xx, 4xx), then the diagnostic text ("mailbox
full", "quota", "try again later" soft; "user unknown", "no such user",
"does not exist" hard).  A returned message with no other clue is hard.

Nothing in here raises on odd input: broken MIME, undecodable headers,
missing parts and unknown status codes give a defined, possibly empty,
result.
"""

from __future__ import annotations

import email.header
import email.policy
import json
import re
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import BytesParser, Parser
from typing import Callable, Iterable, Iterator, Optional, TextIO

__all__ = [
    "BounceAnalyzer",
    "FailedRecipient",
    "analyze_bounce_main",
    "analyze_file",
    "bounce_to",
    "detect",
    "PRIMARY_STATUS_CODES",
    "SECONDARY_STATUS_CODES",
    "COMBINED_STATUS_CODES",
]


# RFC 3463 (and RFC 3886, 4468, 7372 for the later detail codes).
PRIMARY_STATUS_CODES = {
    "1": "Unknown Status Code 1",
    "2": "Success",
    "3": "Unknown Status Code 3",
    "4": "Persistent Transient Failure",
    "5": "Permanent Failure",
}

SECONDARY_STATUS_CODES = {
    "0": "Other or Undefined Status",
    "1": "Addressing Status",
    "2": "Mailbox Status",
    "3": "Mail System Status",
    "4": "Network and Routing Status",
    "5": "Mail Delivery Protocol Status",
    "6": "Message Content or Media Status",
    "7": "Security or Policy Status",
}

COMBINED_STATUS_CODES = {
    "00": "Not Applicable",
    "10": "Other address status",
    "11": "Bad destination mailbox address",
    "12": "Bad destination system address",
    "13": "Bad destination mailbox address syntax",
    "14": "Destination mailbox address ambiguous",
    "15": "Destination mailbox address valid",
    "16": "Mailbox has moved",
    "17": "Bad sender's mailbox address syntax",
    "18": "Bad sender's system address",
    "110": "Recipient address has null MX",
    "20": "Other or undefined mailbox status",
    "21": "Mailbox disabled, not accepting messages",
    "22": "Mailbox full",
    "23": "Message length exceeds administrative limit",
    "24": "Mailing list expansion problem",
    "30": "Other or undefined mail system status",
    "31": "Mail system full",
    "32": "System not accepting network messages",
    "33": "System not capable of selected features",
    "34": "Message too big for system",
    "35": "System incorrectly configured",
    "36": "Requested priority was changed",
    "40": "Other or undefined network or routing status",
    "41": "No answer from host",
    "42": "Bad connection",
    "43": "Routing server failure",
    "44": "Unable to route",
    "45": "Network congestion",
    "46": "Routing loop detected",
    "47": "Delivery time expired",
    "50": "Other or undefined protocol status",
    "51": "Invalid command",
    "52": "Syntax error",
    "53": "Too many recipients",
    "54": "Invalid command arguments",
    "55": "Wrong protocol version",
    "56": "Authentication Exchange line is too long",
    "60": "Other or undefined media error",
    "61": "Media not supported",
    "62": "Conversion required and prohibited",
    "63": "Conversion required but not supported",
    "64": "Conversion with loss performed",
    "65": "Conversion failed",
    "66": "Message content not available",
    "67": "Non-ASCII addresses not permitted for that sender/recipient",
    "68": "UTF-8 string reply is required, but not permitted by the SMTP client",
    "69": "UTF-8 header message cannot be transferred to one or more recipients",
    "70": "Other or undefined security status",
    "71": "Delivery not authorized, message refused",
    "72": "Mailing list expansion prohibited",
    "73": "Security conversion required but not possible",
    "74": "Security features not supported",
    "75": "Cryptographic failure",
    "76": "Cryptographic algorithm not supported",
    "77": "Message integrity failure",
    "78": "Authentication credentials invalid",
    "79": "Authentication mechanism is too weak",
    "710": "Encryption Needed",
    "711": "Encryption required for requested authentication mechanism",
    "712": "A password transition is needed",
    "713": "User Account Disabled",
    "714": "Trust relationship required",
    "715": "Priority Level is too low",
    "716": "Message is too big for the specified priority",
    "717": "Mailbox owner has changed",
    "718": "Domain owner has changed",
    "719": "RRVS test cannot be completed",
    "720": "No passing DKIM signature found",
    "721": "No acceptable DKIM signature found",
    "722": "No valid author-matched DKIM signature found",
    "723": "SPF validation failed",
    "724": "SPF validation error",
    "725": "Reverse DNS validation failed",
    "726": "Multiple authentication checks failed",
    "727": "Sender address has null MX",
}


# Lamson's header patterns, matched against every value of the header.
BOUNCE_MATCHERS = {
    "Action": re.compile(r"(failed|delayed|delivered|relayed|expanded)", re.I | re.S),
    "Content-Description": re.compile(
        r"(Notification|Undelivered Message|Delivery Report)", re.I | re.S
    ),
    "Diagnostic-Code": re.compile(r"(.+);\s*([0-9\-\.]+)?\s*(.*)", re.I | re.S),
    "Final-Recipient": re.compile(r"(.+);\s*(.*)", re.I | re.S),
    "Received": re.compile(r"(.+)", re.I | re.S),
    "Remote-Mta": re.compile(r"(.+);\s*(.*)", re.I | re.S),
    "Reporting-Mta": re.compile(r"(.+);\s*(.*)", re.I | re.S),
    "Status": re.compile(r"([0-9]+)\.([0-9]+)\.([0-9]+)", re.I | re.S),
}

BOUNCE_MAX = len(BOUNCE_MATCHERS) * 2.0

# Scores given to what the analyzer recognised (see the module docstring).
_RECOGNISED_FLOOR = 0.5
_UNRECOGNISED_CAP = 0.25

# Guards against pathological input.
_MAX_PARTS = 500
_MAX_DEPTH = 30
_MAX_TEXT = 200_000


@dataclass(frozen=True)
class FailedRecipient:
    """
    One recipient a bounce reports as failed (or delayed).

    @ivar address: the address as reported, without angle brackets.
    @ivar status: the RFC 3463 status (C{"5.1.1"}) when one is known.
    @ivar hard: C{True} for a permanent failure, C{False} for a transient
        one or a delay warning, C{None} when nothing tells.
    @ivar diagnostic: the remote server's or the MTA's explanation.
    @ivar action: the DSN action (C{"failed"}, C{"delayed"}) when given.
    @ivar remote_mta: the DSN Remote-MTA when given.
    """

    address: str
    status: Optional[str]
    hard: Optional[bool]
    diagnostic: Optional[str] = None
    action: Optional[str] = None
    remote_mta: Optional[str] = None


# ---------------------------------------------------------------------------
# Safe access to messages
# ---------------------------------------------------------------------------


def _parse(msg) -> Message:
    """
    Turn what the caller gave into a message; never raise.
    """
    if isinstance(msg, Message):
        return msg
    try:
        if isinstance(msg, (bytes, bytearray, memoryview)):
            return BytesParser(policy=email.policy.default).parsebytes(bytes(msg))
        if isinstance(msg, str):
            return Parser(policy=email.policy.default).parsestr(msg)
    except Exception:
        pass
    return EmailMessage()


def _decode_raw_header(value) -> str:
    if value is None:
        return ""
    if isinstance(value, email.header.Header):
        try:
            return str(value)
        except Exception:
            value = value.encode() if hasattr(value, "encode") else ""
    value = str(value)
    try:
        chunks = []
        for data, charset in email.header.decode_header(value):
            if isinstance(data, bytes):
                chunks.append(_decode_bytes(data, charset))
            else:
                chunks.append(data)
        return "".join(chunks)
    except Exception:
        return value


def _header_values(part: Message, name: str) -> list[str]:
    """
    All values of header C{name} as text, however broken they are.
    """
    out = []
    try:
        items = part.raw_items()
    except Exception:
        items = []
    lname = name.lower()
    for key, value in items:
        try:
            if str(key).lower() != lname:
                continue
        except Exception:
            continue
        out.append(_unfold(_decode_raw_header(value)))
    return out


def _header(part: Message, name: str) -> str:
    values = _header_values(part, name)
    return values[0] if values else ""


def _unfold(text: str) -> str:
    return re.sub(r"\r?\n[ \t]+", " ", text).strip()


def _decode_bytes(data: bytes, charset: Optional[str] = None) -> str:
    for cs in (charset, "utf-8"):
        if not cs:
            continue
        try:
            return data.decode(cs)
        except Exception:
            continue
    return data.decode("latin-1")


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type().lower()
    except Exception:
        return "text/plain"


def _part_bytes(part: Message) -> bytes:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if isinstance(payload, bytes):
        return payload[:_MAX_TEXT]
    try:
        raw = part.get_payload()
    except Exception:
        return b""
    if isinstance(raw, str):
        return raw[:_MAX_TEXT].encode("utf-8", "surrogateescape")
    return b""


def _part_text(part: Message) -> str:
    data = _part_bytes(part)
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    text = _decode_bytes(data, charset)
    if _content_type(part) == "text/html":
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


def _is_flat(part: Message) -> bool:
    try:
        return isinstance(part.get_payload(), str)
    except Exception:
        return False


_BOUNDARY_LINE = re.compile(rb"^--([^\s]{6,200}?)(--)?[ \t]*\r?$", re.M)


def _repair_multipart(msg: Message) -> Message:
    """
    A multipart message whose declared boundary never appears in the body
    (mangled by a relay or an anonymiser) parses as one blob.  When the
    body does have boundary-like lines, parse it again with that boundary.
    """
    try:
        if not msg.get_content_maintype() == "multipart" or not _is_flat(msg):
            return msg
        body = _part_bytes(msg)
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
            head.append("%s: %s" % (key, _unfold(str(value))))
        raw = "\n".join(head).encode("utf-8", "surrogateescape") + b"\n\n" + body
        fixed = BytesParser(policy=email.policy.default).parsebytes(raw)
        payload = fixed.get_payload()
        if isinstance(payload, list) and payload:
            return fixed
    except Exception:
        pass
    return msg


def _walk(msg: Message) -> Iterator[tuple[Message, int]]:
    """
    Yield (part, depth-inside-attached-messages) for every MIME part,
    iteratively, bounded in count and depth.
    """
    stack = [(msg, 0, 0)]
    count = 0
    while stack and count < _MAX_PARTS:
        part, inside, depth = stack.pop()
        count += 1
        yield part, inside
        if depth >= _MAX_DEPTH:
            continue
        try:
            if not part.is_multipart():
                continue
            children = part.get_payload()
        except Exception:
            continue
        if not isinstance(children, list):
            continue
        ctype = _content_type(part)
        nested = inside + (1 if ctype in ("message/rfc822", "message/global") else 0)
        for child in reversed(children):
            if isinstance(child, Message):
                stack.append((child, nested, depth + 1))


# ---------------------------------------------------------------------------
# Addresses and status codes
# ---------------------------------------------------------------------------

_ADDR = re.compile(
    r"(?<![\w.!#$%&'*+/=?^`{|}~-])"
    r"([A-Za-z0-9!#$%&'*+/=?^_`{|}~-][A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+)"
)
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
_REPLY = re.compile(r"(?<![\d.#-])([245]\d\d)(?:[ -]|$)(?!\s*(?:bytes|ms|seconds|minutes|hours|days))")


def _clean_address(text: str) -> Optional[str]:
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
    m = _ADDR.search(text)
    if not m:
        return None
    return m.group(1).strip(".")


def _addresses_in(text: str) -> list[str]:
    # X.400-style Exchange lines: "c=US;a= ;p=ORG;dda:SMTP=user@host;"
    text = re.sub(r"(?i)\bSMTP=", "SMTP: ", text)
    out = []
    for m in _ADDR.finditer(text):
        addr = m.group(1).strip(".")
        if "@" in addr:
            out.append(addr)
    return out


def _enhanced_status(text: str) -> Optional[str]:
    if not text:
        return None
    m = _ENHANCED.search(text)
    if m:
        return "%s.%s.%s" % m.groups()
    return None


def _reply_code(text: str) -> Optional[str]:
    if not text:
        return None
    for m in _REPLY.finditer(text):
        code = m.group(1)
        if code[0] in "45":
            return code
    return None


def _status_parts(status: Optional[str]):
    if not status:
        return None
    m = re.match(r"\s*([0-9]+)\.([0-9]+)\.([0-9]+)", status)
    if not m:
        return None
    return m.groups()


_SOFT_TEXT = re.compile(
    r"mailbox (is )?full|mailbox.{0,20}(over|exceed)|quota|insufficient (disk )?space|"
    r"try (again )?later|temporar|greylist|grey-list|graylist|deferred|delayed|"
    r"will be retried|still being retried|will continue|not yet been delivered|"
    r"warning message only|do not need to resend|no need to resend|too many connections|"
    r"rate limit|connection (timed out|refused)|timed? ?out",
    re.I,
)
_HARD_TEXT = re.compile(
    r"user unknown|unknown user|no such (user|mailbox|recipient|address|domain|person)|"
    r"does not exist|doesn'?t exist|not exist|unknown (recipient|address|local|mailbox)|"
    r"recipient (address )?(unknown|rejected|not found)|address rejected|invalid (recipient|address|mailbox|user)|"
    r"not (a )?(valid|known)|mailbox (unavailable|not found|disabled)|account (has been )?(disabled|suspended|closed)|"
    r"host (not found|unknown)|domain (not found|unknown)|unrouteable|unroutable|no mailbox|"
    r"permanent|gave up|given up|not listed|addressee unknown|not our customer|"
    r"name is not recognized|user not found|unknown or illegal",
    re.I,
)
_DELAY_TEXT = re.compile(
    r"has been delayed|will be retried|still being retried|warning message only|"
    r"not yet been delivered|delivery attempts will continue|will continue to (try|attempt)|"
    r"do not need to resend|no action is required|delayed \d+ (hour|minute|day)|"
    r"\(delay\)|temporarily deferred",
    re.I,
)


def _judge_hard(action: Optional[str], status: Optional[str], diagnostic: str,
                default: Optional[bool]) -> Optional[bool]:
    if action and action.lower().startswith("delay"):
        return False
    parts = _status_parts(status)
    if parts and parts[0] in ("4", "5"):
        return parts[0] == "5"
    code = _reply_code(diagnostic)
    if code:
        return code[0] == "5"
    if action and re.match(r"(failed|failure|expired|abort)", action.lower()):
        # The message came back for good: Lamson and RFC 3464 read that as
        # permanent, whatever the cause ("mailbox full" included).
        return True
    if diagnostic:
        if _SOFT_TEXT.search(diagnostic):
            return False
        if _HARD_TEXT.search(diagnostic):
            return True
    return default


# ---------------------------------------------------------------------------
# message/delivery-status parsing
# ---------------------------------------------------------------------------


def _dsn_text(part: Message) -> str:
    payload = None
    try:
        payload = part.get_payload()
    except Exception:
        pass
    if isinstance(payload, list):
        blocks = []
        for group in payload:
            if not isinstance(group, Message):
                continue
            lines = []
            try:
                items = group.raw_items()
            except Exception:
                items = []
            for key, value in items:
                lines.append("%s: %s" % (key, _unfold(_decode_raw_header(value))))
            try:
                body = group.get_payload()
            except Exception:
                body = None
            if isinstance(body, str) and body.strip():
                # Groups run together (no blank line): the rest sits in the body.
                lines.append(body)
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)
    return _decode_bytes(_part_bytes(part), "utf-8")


_DSN_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)\s*:\s?(.*)$")
_RECIPIENT_FIELDS = ("final-recipient", "original-recipient", "x-actual-recipient")


def _parse_dsn(text: str) -> tuple[dict, list[dict]]:
    """
    Split a delivery-status body into the per-message fields and a list of
    per-recipient field dicts (lower-case names, first value wins).
    """
    groups: list[dict] = []
    current: dict = {}
    last_key = None
    for raw in text.replace("\r\n", "\n").split("\n"):
        if not raw.strip():
            if current:
                groups.append(current)
            current, last_key = {}, None
            continue
        if raw[:1] in " \t" and last_key:
            current[last_key] += " " + raw.strip()
            continue
        m = _DSN_FIELD.match(raw)
        if not m:
            continue
        key, value = m.group(1).lower(), m.group(2).strip()
        if key in current:
            # A new record that was not separated by a blank line.
            groups.append(current)
            current = {}
        current[key] = value
        last_key = key
    if current:
        groups.append(current)
    message_fields: dict = {}
    recipients = []
    for group in groups:
        if any(k in group for k in _RECIPIENT_FIELDS):
            recipients.append(group)
        elif "status" in group or "action" in group:
            recipients.append(group)
        else:
            for k, v in group.items():
                message_fields.setdefault(k, v)
    return message_fields, recipients


# ---------------------------------------------------------------------------
# Non-DSN formats
# ---------------------------------------------------------------------------

_SUBJECT_BOUNCE = re.compile(
    r"undeliver|undelivered|returned mail|returning message|"
    r"delivery (status notification|failure|failed|has failed|problem|notification)|"
    r"mail delivery (failed|failure|problem|system|error)|failure notice|"
    r"non-?deliver|not (been )?delivered|could not be delivered|mail system error|"
    r"delivery delayed|delayed mail|warning: message .* delayed|failed mail|"
    r"error sending|mail failure|delivery error|message delivery|"
    r"nicht zustellbar|unzustellbar|non remis|non recapitabile|no entregado|"
    r"loop alert|bounced? (mail|message)|rejected|mail failure|"
    r"smtp server: errors from|エラー|退信|失败",
    re.I,
)
_FROM_DAEMON = re.compile(
    r"mailer[-_ ]?daemon|postmaster|post_master|mail delivery|delivery subsystem|"
    r"mail[-_ ]?administrator|mdaemon|ndr|system administrator|mail system",
    re.I,
)
# Phrases that on their own say "this is a delivery failure report".
_STRONG_BODY = re.compile((
    r"this is the qmail-send program|wasn'?t able to deliver your message|"
    r"was not able to deliver your message|"
    r"could not be delivered to (one or more|all)|message that you sent (could not|has not yet)|"
    r"following address(es)? (had permanent fatal errors|had delivery errors|failed)|"
    r"address\(es\) failed|"
    r"delivery to the following recipients? (failed|has been delayed|was aborted)|"
    r"did not reach the following recipient|unable to deliver (your )?message to the following|"
    r"could not deliver (the )?message to the following|"
    r"delivery has failed to these recipients|the following message to .{0,200} was undeliverable|"
    r"was not delivered to|message not delivered to the following|"
    r"this is the (postfix|mail system|mail delivery agent|dragonfly)|"
    r"i'?m sorry to have to inform you that (your|the) message|"
    r"permanent fatal (delivery )?errors|"
    r"your message (could not|couldn'?t|wasn'?t|was not|cannot) be delivered|"
    r"(could not|couldn'?t|was not|wasn'?t) (be )?delivered to the following|"
    r"failed addresses follow|failed recipients?|"
    r"there was an error (sending|delivering) your mail|"
    r"error occurred while trying to deliver the mail|"
    r"undeliverable to |delivery failed \d+ attempts|invalid final delivery userid|"
    r"message delivery has failed|your message was undeliverable|"
    r"each of the following recipients was rejected|"
    r"the original message was received at .{0,80}\n.{0,200}(following|transcript)|"
    r"returned to sender|is undeliverable|undeliverable message|"
    r"(could not|couldn'?t|cannot|can'?t) be delivered to\b|"
    r"recipient addresses that were incorrectly constructed|"
    r"this is a permanent error|"
    r"nicht zugestellt werden|konnte nicht zugestellt|unzustellbar|"
    r"n'a pas pu .tre (remis|d.livr)|non . stato possibile consegnare|"
    r"no se ha podido entregar|не может быть доставлено|не удалось доставить|"
    r"无法送达|无法发送|退信|送信できませんでした|配信できませんでした|届きませんでした"
).replace(" ", r"\s+"), re.I)
_WEAK_BODY = re.compile(
    r"undeliver|not (be )?delivered|could not deliver|delivery (failed|failure|error)|"
    r"failed permanently|permanent error|user unknown|unknown user|no such user|"
    r"mailbox (is )?(full|unavailable)|does not exist|over quota|quota exceeded|"
    r"recipient (address )?rejected|rejected|returned mail|mail delivery|delivery status|"
    r"message (was )?not delivered|delivery to .* failed|failure notice",
    re.I,
)
_AUTOREPLY_SUBJECT = re.compile(
    r"out of (the )?office|automatic reply|auto(matic)?[ -]?(reply|response|respons|answer)|"
    r"autorespons|autoreply|vacation|abwesenheit|abwesend|r[ée]ponse automatique|"
    r"absence|away from (my|the) (desk|office)|on leave|risposta automatica|"
    r"respuesta autom[aá]tica|automatisch antwoord|afwezig|自動応答|自動返信|不在",
    re.I,
)
# Where the returned copy of the message begins inside a plain-text bounce.
_ORIGINAL_MARKER = re.compile(
    r"^\s*(?:[-=_*|]{2,}.*)?(?:below this line is a copy|this is a copy of the message|"
    r"original message|message header(s)? follow|unsent message below|returned mail\b|"
    r"message text follows|attachment is a copy|header and top|summary of the undelivered|"
    r"mensaje original|original message as received|copy of (the|your) (original )?message|"
    r"undelivered message|the original message headers|headers of the original|"
    r"included is a copy|original message headers)",
    re.I,
)
_HEADERISH = re.compile(r"^>?\s?(Received|Return-Path|Message-I[Dd]|X-[\w-]+|DKIM-Signature|"
                        r"MIME-Version|Content-Type):", re.I)
_TRIGGER = re.compile(
    r"recipient|address|following|not delivered|could not be delivered|failed|undeliverable|"
    r"unable to deliver|delivery to|was not delivered|rejected|error",
    re.I,
)
_HELP_LINE = re.compile(r"contact|please|questions|assistance|send e-?mail to|write to|help", re.I)
_SENDER_LINE = re.compile(r"(?i)(^|\s)(mail\s+)?from:\s*<|^\s*from:\s|sender:")
_LEAD = (
    r"^\s*(?:[*>•\-]+\s*|(?:final-recipient:\s*rfc822;|original-recipient:\s*rfc822;|"
    r"failed recipients?:|recipient(?: address)?:|(?:in:\s+)?rcpt to:|"
    r"invalid final delivery userid:|undeliverable to|delivery failed \d+ attempts:|"
    r"address:|addressee:|user|[45]\d\d(?:[ -][245]\.\d+\.\d+)?[ -].{0,40}?)\s*)?"
)
_LIST_LINE = re.compile(
    _LEAD + r"[<(\[\"]?(?P<addr>[^\s<>()\[\]\"]+@[^\s<>()\[\]\"]+?)[>)\]\"]?"
    r"(?:<mailto:[^>]*>)?\s*(?:$|:|\.\.\.|;|,|\s+on\s|\s*\(|\s+-|\s+\[|\s+because|"
    r"\s+\S*(?:user|unknown|mailbox|failed|not|error|recipient|host|no such|does))",
    re.I,
)


@dataclass
class _Candidate:
    address: str
    tier: int
    diagnostic: str


# ---------------------------------------------------------------------------
# The analyzer
# ---------------------------------------------------------------------------


class BounceAnalyzer:
    """
    What C{detect} found out about one message.  Attributes follow Lamson's
    C{BounceAnalyzer}; C{recipients} lists every failed recipient.
    """

    def __init__(self, msg: Message):
        self.msg = msg
        self.recipients: list[FailedRecipient] = []
        self.kind = "unknown"  # "dsn", "text", "ses", "feedback", "delivered", "autoreply", ...
        self.delay_warning = False
        self.header_score = 0.0
        self.score = 0.0
        self.primary_status = (None, None)
        self.secondary_status = (None, None)
        self.combined_status = (None, None)
        self.remote_mta = None
        self.reporting_mta = None
        self.final_recipient = None
        self.diagnostic_codes = (None, None)
        self.action = None
        self.content_parts: dict = {}
        self.original = None
        self.report = None
        self.notification = None
        try:
            self._analyze()
        except Exception:
            # RecursionError included: deeply broken input is "not recognised".
            self._give_up()

    # -- Lamson API ---------------------------------------------------------

    def probable(self, threshold: float = 0.3) -> bool:
        """
        Is this message probably a bounce?
        """
        return self.score >= threshold

    def is_hard(self) -> bool:
        """
        A probable bounce that failed permanently.
        """
        return self.probable() and self.hard is True

    def is_soft(self) -> bool:
        """
        A probable bounce that failed temporarily, or only warns of a delay.
        """
        return self.probable() and self.hard is False

    def error_for_humans(self) -> str:
        """
        The best explanation the bounce gives, for a human.
        """
        code, text = self.diagnostic_codes
        if text or code:
            return text or code
        for r in self.recipients:
            if r.diagnostic:
                return r.diagnostic
        if self.combined_status[1]:
            return self.combined_status[1]
        return "No Diagnostic-Code given."

    # -- extras ---------------------------------------------------------------

    def is_auto_reply(self) -> bool:
        """
        An auto-reply or vacation notice (RFC 3834), which is not a bounce.
        """
        return self.kind == "autoreply"

    @property
    def status(self) -> Optional[str]:
        """
        The primary recipient's status as C{"5.1.1"}, or None.
        """
        for r in self.recipients:
            if r.status:
                return r.status
        return None

    @property
    def hard(self) -> Optional[bool]:
        """
        True (permanent), False (transient or delay warning) or None
        (recipients disagree and no status decides, or nothing tells).
        """
        if not self.probable():
            return None
        verdicts = [r.hard for r in self.recipients if r.hard is not None]
        if not verdicts:
            return None
        if all(verdicts):
            return True
        if not any(verdicts):
            return False
        code = self.primary_status[0]
        if code in (4, 5):
            return code == 5
        return verdicts[0]

    # -- internals ------------------------------------------------------------

    def _give_up(self):
        self.kind = "broken"
        self.score = min(self.score, _UNRECOGNISED_CAP)
        self.recipients = []

    def _analyze(self):
        msg = self.msg
        parts = list(_walk(msg))
        self._lamson_score(parts)
        top = [p for p, inside in parts if inside == 0]

        subject = _header(msg, "Subject")
        sender = _header(msg, "From")
        types = [_content_type(p) for p in top]
        try:
            report_type = (msg.get_param("report-type", header="content-type") or "")
        except Exception:
            report_type = ""
        report_type = str(report_type).lower()

        self._collect_parts(parts)

        # ARF abuse reports and their Hotmail-style cousins are not bounces.
        if ("message/feedback-report" in types or report_type == "feedback-report"
                or re.search(r"^\s*complaint about message from", subject, re.I)):
            return self._not_a_bounce("feedback")

        dsn_parts = [p for p, inside in parts if inside == 0 and _content_type(p) in (
            "message/delivery-status", "message/global-delivery-status")]
        if not dsn_parts:
            dsn_parts = [p for p, inside in parts if _content_type(p) in (
                "message/delivery-status", "message/global-delivery-status")][:1]

        notification = self._notification_text(top)
        region = self._cut_original(notification)

        dsn_texts = [_dsn_text(p) for p in dsn_parts]
        if not dsn_texts:
            # A delivery-status block pasted into the text, or left there by
            # broken MIME.
            m = re.search(r"(?im)^(?:original|final)-recipient\s*:", region)
            if m:
                dsn_texts = [region[m.start():]]
        if dsn_texts:
            self._from_dsn(dsn_texts)
            if self.kind == "delivered":
                return self._not_a_bounce("delivered")
            if self.recipients:
                self.kind = "dsn"
                self._finish(region, strong=True)
                return

        ses = self._from_ses(notification)
        if ses is not None:
            if not ses:
                return self._not_a_bounce("delivered")
            self.kind = "ses"
            self._finish(region, strong=True)
            return

        strong = bool(_STRONG_BODY.search(region)) or bool(_STRONG_BODY.search(subject))
        subject_hit = bool(_SUBJECT_BOUNCE.search(subject))
        daemon = bool(_FROM_DAEMON.search(sender)) or _header(msg, "Return-Path").strip() == "<>"
        weak = bool(_WEAK_BODY.search(region))
        failed_header = bool(_header_values(msg, "X-Failed-Recipients"))

        if not (strong or failed_header or dsn_parts):
            if self._looks_autoreply(msg, subject):
                return self._not_a_bounce("autoreply")
        listed = daemon and any(
            _LIST_LINE.match(line) for line in region.split("\n")[:200] if "@" in line)
        evidence = strong or failed_header or (subject_hit and (daemon or weak)) or (
            daemon and (weak or listed))
        if not evidence:
            self.kind = "unknown"
            self.score = min(self.header_score, _UNRECOGNISED_CAP)
            return
        self.kind = "text"
        self._from_text(region, notification)
        self._finish(region, strong=strong or failed_header)

    @staticmethod
    def _looks_autoreply(msg: Message, subject: str) -> bool:
        auto = _header(msg, "Auto-Submitted").lower()
        if auto.startswith("auto-replied"):
            return True
        for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Vacation",
                     "X-Auto-Reply", "X-Autoreply-From", "X-Mail-Autoreply"):
            if _header_values(msg, name):
                return True
        precedence = _header(msg, "Precedence").lower()
        if precedence in ("auto_reply", "autoreply"):
            return True
        return bool(_AUTOREPLY_SUBJECT.search(subject))

    def _not_a_bounce(self, kind: str):
        self.kind = kind
        self.recipients = []
        self.score = 0.0

    def _lamson_score(self, parts):
        found: dict = {}
        for part, _inside in parts:
            for key in BOUNCE_MATCHERS:
                for value in _header_values(part, key)[:1]:
                    found.setdefault(key, set()).add(value)
            if _content_type(part) in ("message/delivery-status", "message/global-delivery-status"):
                _fields, groups = _parse_dsn(_dsn_text(part))
                for group in [_fields] + groups:
                    for key in BOUNCE_MATCHERS:
                        value = group.get(key.lower())
                        if value is not None:
                            found.setdefault(key, set()).add(value)
        score = 0.0
        for key, matcher in BOUNCE_MATCHERS.items():
            values = found.get(key)
            if not values:
                continue
            score += 1
            matched = sum(1 for v in values if matcher.match(v))
            score += matched / len(values)
        self.header_score = score / BOUNCE_MAX
        self.score = self.header_score

    def _collect_parts(self, parts):
        for part, inside in parts:
            if inside:
                continue
            ctype = _content_type(part)
            desc = _header(part, "Content-Description").lower().strip()
            if desc:
                self.content_parts.setdefault(desc, part)
            if ctype in ("message/delivery-status", "message/global-delivery-status"):
                if self.report is None:
                    self.report = part
            elif ctype in ("message/rfc822", "message/global", "text/rfc822-headers",
                           "text/rfc822-header", "message/rfc822-headers"):
                if self.original is None:
                    self.original = self._original_message(part)
            elif ctype.startswith("text/") and self.notification is None and part is not self.msg:
                self.notification = part
        if self.report is None:
            self.report = self.content_parts.get("delivery report")
        if self.notification is None:
            self.notification = self.content_parts.get("notification")

    @staticmethod
    def _original_message(part: Message):
        try:
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        except Exception:
            pass
        return _parse(_part_bytes(part))

    def _notification_text(self, top) -> str:
        texts = []
        html = []
        for part in top:
            ctype = _content_type(part)
            if ctype in ("message/rfc822", "message/global", "text/rfc822-headers"):
                break
            if ctype == "text/plain" or (ctype.startswith("text/") and ctype != "text/html"):
                texts.append(_part_text(part))
            elif ctype.startswith("multipart/") and _is_flat(part):
                # A multipart whose boundary never appears: its body is all we have.
                texts.append(_decode_bytes(_part_bytes(part), "utf-8"))
            elif ctype == "text/html":
                html.append(_part_text(part))
        text = "\n".join(texts) if texts else "\n".join(html)
        return text[:_MAX_TEXT]

    @staticmethod
    def _cut_original(text: str) -> str:
        lines = text.split("\n")
        out = []
        for i, line in enumerate(lines):
            if i > 0 and _ORIGINAL_MARKER.search(line):
                break
            if _HEADERISH.match(line) and i + 1 < len(lines) and (
                    _HEADERISH.match(lines[i + 1]) or lines[i + 1][:1] in (" ", "\t")):
                break
            out.append(line)
        return "\n".join(out)

    # -- DSN ----------------------------------------------------------------

    def _from_dsn(self, dsn_texts: list[str]):
        recipients = []
        any_failure = False
        any_group = False
        for text in dsn_texts:
            fields, groups = _parse_dsn(text)
            if self.reporting_mta is None and fields.get("reporting-mta"):
                self.reporting_mta = _mta_name(fields["reporting-mta"])
            for group in groups:
                any_group = True
                action = (group.get("action") or "").strip().lower() or None
                status = group.get("status") or ""
                diag = group.get("diagnostic-code") or ""
                parts_ = _status_parts(status)
                if action and re.match(r"(delivered|relayed|expanded)", action):
                    continue
                if action is None and parts_ and parts_[0] == "2":
                    continue
                any_failure = True
                address = None
                for key in _RECIPIENT_FIELDS:
                    address = _clean_address(group.get(key, ""))
                    if address:
                        break
                if not address:
                    continue
                effective = status if parts_ else None
                # "5.0.0" says little: a more precise code in the text wins.
                better = _enhanced_status(diag)
                if better and (not parts_ or (parts_[1:] == ("0", "0") and better[0] == parts_[0])):
                    effective = better
                elif not parts_ and better:
                    effective = better
                if effective:
                    effective = ".".join(_status_parts(effective))
                hard = _judge_hard(action, effective, diag, None if action is None else True)
                if action and action.startswith("delay"):
                    self.delay_warning = True
                recipients.append(FailedRecipient(
                    address=address, status=effective, hard=hard,
                    diagnostic=_diag_text(diag) or None, action=action,
                    remote_mta=_mta_name(group.get("remote-mta", "")) or None,
                ))
                if self.diagnostic_codes == (None, None) and diag:
                    m = BOUNCE_MATCHERS["Diagnostic-Code"].match(diag)
                    if m:
                        self.diagnostic_codes = (m.group(2) or m.group(1), m.group(3) or None)
                    else:
                        self.diagnostic_codes = (None, diag)
                if self.action is None and action:
                    self.action = action
                if self.remote_mta is None and group.get("remote-mta"):
                    self.remote_mta = _mta_name(group["remote-mta"])
        if any_group and not any_failure:
            self.kind = "delivered"
            return
        self.recipients = _dedupe(recipients)

    # -- Amazon SES JSON ------------------------------------------------------

    def _from_ses(self, text: str):
        """
        None when C{text} is not an SES notification; a (possibly empty) list
        of recipients otherwise.
        """
        if '\\"notificationType\\"' in text:
            # SES JSON inside an SNS JSON envelope.
            text = text.replace('\\"', '"')
        if '"notificationType"' not in text:
            return None
        m = re.search(r'"notificationType"\s*:\s*"(\w+)"', text)
        if not m:
            return None
        kind = m.group(1).lower()
        if kind != "bounce":
            return []
        flat = re.sub(r"!?\n ?", "", text)
        permanent = None
        bt = re.search(r'"bounceType"\s*:\s*"(\w+)"', flat)
        if bt:
            permanent = bt.group(1).lower() == "permanent"
        block = flat
        b = re.search(r'"bouncedRecipients"\s*:\s*\[(.*?)\]', flat, re.S)
        if b:
            block = b.group(1)
        recipients = []
        for entry in re.finditer(r"\{[^{}]*\}", block):
            chunk = entry.group(0)
            try:
                data = json.loads(chunk)
            except ValueError:
                data = {}
            address = _clean_address(str(data.get("emailAddress", "")))
            if not address:
                continue
            status = data.get("status") or _enhanced_status(str(data.get("diagnosticCode", "")))
            status = ".".join(_status_parts(status)) if _status_parts(status) else None
            diag = str(data.get("diagnosticCode") or "")
            hard = _judge_hard(data.get("action"), status, diag, permanent)
            recipients.append(FailedRecipient(address, status, hard, _diag_text(diag) or None,
                                              data.get("action") or None))
        self.recipients = _dedupe(recipients)
        return self.recipients or [None]

    # -- plain-text bounces -----------------------------------------------------

    def _excluded(self) -> set[str]:
        out = set()
        sources = [(self.msg, ("From", "To", "Cc", "Reply-To", "Return-Path", "Sender",
                               "Errors-To"))]
        if isinstance(self.original, Message):
            sources.append((self.original, ("From", "Sender", "Return-Path", "Reply-To",
                                            "Errors-To")))
        for part, names in sources:
            for name in names:
                for value in _header_values(part, name):
                    for a in _addresses_in(value):
                        out.add(a.lower())
        return out

    def _from_text(self, region: str, notification: str):
        excluded = self._excluded()
        candidates: dict[str, _Candidate] = {}

        def add(addr, tier, diag):
            key = addr.lower()
            if key in excluded and tier > 1:
                return
            old = candidates.get(key)
            if old is None or tier < old.tier:
                candidates[key] = _Candidate(addr, tier, diag if old is None else old.diagnostic or diag)

        for value in _header_values(self.msg, "X-Failed-Recipients"):
            for a in _addresses_in(value):
                add(a, 0, "")

        lines = region.split("\n")
        trigger_until = -1
        for i, line in enumerate(lines):
            found = _addresses_in(line)
            if _TRIGGER.search(line) and not found:
                trigger_until = i + 4
            if not found:
                continue
            diag = _diagnostic_after(lines, i)
            m = _LIST_LINE.match(line)
            help_line = (bool(_HELP_LINE.search(line)) and not m) or bool(_SENDER_LINE.search(line))
            for a in found:
                if m and m.group("addr").strip("<>.,;:").lower() == a.lower():
                    add(a, 1, diag)
                elif help_line:
                    add(a, 4, diag)
                elif i <= trigger_until or _TRIGGER.search(line) or _WEAK_BODY.search(line):
                    add(a, 2, diag)
                else:
                    add(a, 3, diag)
        # Sendmail, Postfix and friends return the recipient in the original's
        # headers only; use it when the report itself names nobody.
        if isinstance(self.original, Message):
            for name in ("To", "Cc"):
                for value in _header_values(self.original, name):
                    for a in _addresses_in(value):
                        add(a, 5, "")
        else:
            # Plain-text copy of the original after the marker.
            rest = notification[len(region):]
            for m in re.finditer(r"(?im)^>?\s?To:\s*(.+)$", rest[:20000]):
                for a in _addresses_in(m.group(1)):
                    add(a, 5, "")
                break

        if not candidates:
            return
        best = min(c.tier for c in candidates.values())
        if best == 0:
            # X-Failed-Recipients is exact; listed addresses add their texts.
            chosen = [c for c in candidates.values() if c.tier == 0]
            texts = {c.address.lower(): c.diagnostic for c in candidates.values() if c.tier == 1}
            chosen = [_Candidate(c.address, 0, texts.get(c.address.lower()) or _diagnostic_for(region, c.address))
                      for c in chosen]
        else:
            chosen = [c for c in candidates.values() if c.tier == best]
        delay = bool(_DELAY_TEXT.search(region)) or bool(
            re.search(r"delay|warning", _header(self.msg, "Subject"), re.I)
            and not re.search(r"fail|returned|undeliver", _header(self.msg, "Subject"), re.I))
        self.delay_warning = delay
        recipients = []
        for c in chosen:
            diag = c.diagnostic or ""
            status = _enhanced_status(diag)
            hard = _judge_hard("delayed" if delay else "failed", status, diag, True)
            recipients.append(FailedRecipient(c.address, status, hard, _diag_text(diag) or None,
                                              "delayed" if delay else "failed"))
        self.recipients = _dedupe(recipients)

    # -- finishing ------------------------------------------------------------

    def _finish(self, region: str, strong: bool):
        if self.recipients:
            self.final_recipient = self.recipients[0].address
            status = self.status
            parts = _status_parts(status)
            if parts:
                p, s, d = parts
                self.primary_status = (int(p), PRIMARY_STATUS_CODES.get(p, "Unknown Status Code %s" % p))
                self.secondary_status = (int(s), SECONDARY_STATUS_CODES.get(s, "Unknown Status Code %s" % s))
                combined = s + d
                self.combined_status = (int(combined), COMBINED_STATUS_CODES.get(
                    combined, "Unknown Status Code %s.%s" % (s, d)))
            else:
                hard = self.recipients[0].hard
                if hard is not None:
                    p = "5" if hard else "4"
                    self.primary_status = (int(p), PRIMARY_STATUS_CODES[p])
            if self.diagnostic_codes == (None, None):
                diag = self.recipients[0].diagnostic
                if diag:
                    self.diagnostic_codes = (_enhanced_status(diag) or _reply_code(diag), diag)
            if self.action is None:
                self.action = self.recipients[0].action
        if self.reporting_mta is None:
            m = re.search(r"(?:program|agent|server) at (?:host )?([\w.-]+\w)", region, re.I)
            if m:
                self.reporting_mta = m.group(1)
        self.score = max(self.header_score, _RECOGNISED_FLOOR if (strong or self.recipients) else 0.3)


def _mta_name(value: str) -> Optional[str]:
    if not value:
        return None
    if ";" in value:
        value = value.split(";", 1)[1]
    return value.strip().strip("[]").strip() or None


def _diag_text(diag: str) -> str:
    diag = re.sub(r"\s+", " ", diag or "").strip()
    if ";" in diag[:12]:
        diag = diag.split(";", 1)[1].strip()
    return diag[:1000]


def _diagnostic_after(lines: list[str], i: int) -> str:
    """
    The text that explains the address on line C{i}: the rest of that line
    and what follows, up to the line naming another recipient.
    """
    own = {a.lower() for a in _addresses_in(lines[i])}
    chunk = [lines[i].strip()]
    blanks = 0
    for line in lines[i + 1:i + 12]:
        if not line.strip():
            blanks += 1
            if blanks > 2:
                break
            continue
        blanks = 0
        m = _LIST_LINE.match(line) if "@" in line else None
        if m and m.group("addr").strip("<>.,;:").lower() not in own:
            break
        if _ORIGINAL_MARKER.search(line):
            break
        chunk.append(line.strip())
    return " ".join(chunk)


def _diagnostic_for(region: str, address: str) -> str:
    lines = region.split("\n")
    for i, line in enumerate(lines):
        if address.lower() in line.lower():
            return _diagnostic_after(lines, i)
    return region[:500]


def _dedupe(recipients: Iterable[Optional[FailedRecipient]]) -> list[FailedRecipient]:
    seen = set()
    out = []
    for r in recipients:
        if r is None:
            continue
        key = r.address.lower()
        if key in seen:
            continue
        seen.add(key)
        out.append(r)
    return out


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------


def detect(msg) -> BounceAnalyzer:
    """
    Analyse C{msg} (an C{email.message.Message}, or the raw bytes or text of
    one) and return a L{BounceAnalyzer}.  Never raises.
    """
    return BounceAnalyzer(_repair_multipart(_parse(msg)))


def bounce_to(soft: Callable, hard: Callable) -> Callable:
    """
    Decorate a handler C{f(message, *args, **kwargs)}: a message that is a
    probable bounce goes to C{hard} or C{soft} instead (same arguments),
    anything else to C{f}.  A bounce that is neither clearly hard nor soft
    goes to C{hard}, as Lamson does for any non-transient status.
    """

    def wrap(func: Callable) -> Callable:
        def routed(message, *args, **kwargs):
            analysis = detect(message)
            if analysis.probable():
                if analysis.is_soft():
                    return soft(message, *args, **kwargs)
                return hard(message, *args, **kwargs)
            return func(message, *args, **kwargs)

        routed.__name__ = getattr(func, "__name__", "routed")
        routed.__doc__ = getattr(func, "__doc__", None)
        routed.__wrapped__ = func
        return routed

    return wrap


def analyze_file(path: str) -> dict:
    """
    Analyse the message in file C{path}: the C{analyze-bounce} JSON record.
    Raises C{OSError} when the file cannot be read.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    analysis = detect(data)
    bounce = analysis.probable()
    return {
        "file": path,
        "bounce": bool(bounce),
        "score": round(float(analysis.score), 4),
        "hard": analysis.hard if bounce else None,
        "recipients": [r.address.lower() for r in analysis.recipients] if bounce else [],
        "status": analysis.status if bounce else None,
    }


def analyze_bounce_main(paths: Iterable[str], out: TextIO) -> int:
    """
    C{trackermail analyze-bounce FILE...}: one JSON line per file on C{out}.
    Returns 0, or 1 when some file could not be read (its line carries an
    C{"error"} key instead of the analysis).
    """
    status = 0
    for path in paths:
        try:
            record = analyze_file(path)
        except OSError as e:
            status = 1
            record = {"file": path, "error": e.strerror or str(e)}
        except Exception as e:  # detect() does not raise; belt and braces.
            status = 1
            record = {"file": path, "error": "%s: %s" % (type(e).__name__, e)}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return status
