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

Each failed recipient also gets a reason in Sisimai's vocabulary
(C{userunknown}, C{mailboxfull}, C{blocked}, ...): see
L{trackermail.bounces.reasons}.  The parts live in their own modules:
L{mime} (safe access to the message), L{codes} (status codes), L{dsn}
(delivery-status parts), L{formats} (plain-text and SES reports),
L{reasons} and L{phrases} (why a recipient failed), L{report} (the
C{analyze-bounce} command).

Nothing in here raises on odd input: broken MIME, undecodable headers,
missing parts and unknown status codes give a defined, possibly empty,
result.
"""

from __future__ import annotations

import re
from email.message import Message
from typing import Callable, Optional

from trackermail.bounces import formats
from trackermail.bounces.codes import (
    COMBINED_STATUS_CODES,
    PRIMARY_STATUS_CODES,
    SECONDARY_STATUS_CODES,
    enhanced_status,
    reply_code,
    status_parts,
)
from trackermail.bounces.dsn import (
    DIAGNOSTIC_CODE,
    FailedRecipient,
    dsn_text,
    parse_dsn,
    read_dsn,
)
from trackermail.bounces.mime import (
    MAX_TEXT,
    content_type,
    header,
    header_values,
    is_flat,
    parse_message,
    part_bytes,
    part_text,
    repair_multipart,
    walk,
)
from trackermail.message import decode_bytes

__all__ = [
    "BounceAnalyzer",
    "FailedRecipient",
    "bounce_to",
    "detect",
    "PRIMARY_STATUS_CODES",
    "SECONDARY_STATUS_CODES",
    "COMBINED_STATUS_CODES",
]


# Lamson's header patterns, matched against every value of the header.
BOUNCE_MATCHERS = {
    "Action": re.compile(r"(failed|delayed|delivered|relayed|expanded)", re.I | re.S),
    "Content-Description": re.compile(
        r"(Notification|Undelivered Message|Delivery Report)", re.I | re.S
    ),
    "Diagnostic-Code": DIAGNOSTIC_CODE,
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
        parts = list(walk(msg))
        self._lamson_score(parts)
        top = [p for p, inside in parts if inside == 0]

        subject = header(msg, "Subject")
        sender = header(msg, "From")
        types = [content_type(p) for p in top]
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

        dsn_parts = [p for p, inside in parts if inside == 0 and content_type(p) in (
            "message/delivery-status", "message/global-delivery-status")]
        if not dsn_parts:
            dsn_parts = [p for p, inside in parts if content_type(p) in (
                "message/delivery-status", "message/global-delivery-status")][:1]

        notification = self._notification_text(top)
        region = formats.cut_original(notification)

        dsn_texts = [dsn_text(p) for p in dsn_parts]
        if not dsn_texts:
            # A delivery-status block pasted into the text, or left there by
            # broken MIME.
            m = re.search(r"(?im)^(?:original|final)-recipient\s*:", region)
            if m:
                dsn_texts = [region[m.start():]]
        if dsn_texts:
            report = read_dsn(dsn_texts, lambda address: formats.text_about(region, address),
                              region[:4000])
            self._take_dsn(report)
            if report.delivered:
                return self._not_a_bounce("delivered")
            if self.recipients:
                self.kind = "dsn"
                self._finish(region, strong=True)
                return

        ses = formats.ses_recipients(notification)
        if ses is not None:
            is_bounce, self.recipients = ses
            if not is_bounce:
                return self._not_a_bounce("delivered")
            self.kind = "ses"
            self._finish(region, strong=True)
            return

        strong = formats.strong_evidence(region, subject)
        subject_hit = formats.bounce_subject(subject)
        daemon = formats.daemon_sender(sender) or header(msg, "Return-Path").strip() == "<>"
        weak = formats.weak_evidence(region)
        failed_header = bool(header_values(msg, "X-Failed-Recipients"))

        if not (strong or failed_header or dsn_parts):
            if formats.looks_autoreply(msg, subject):
                return self._not_a_bounce("autoreply")
        listed = daemon and formats.lists_addresses(region)
        evidence = strong or failed_header or (subject_hit and (daemon or weak)) or (
            daemon and (weak or listed))
        if not evidence:
            self.kind = "unknown"
            self.score = min(self.header_score, _UNRECOGNISED_CAP)
            return
        self.kind = "text"
        self.recipients, self.delay_warning = formats.text_recipients(
            msg, self.original, region, notification)
        self._finish(region, strong=strong or failed_header)

    def _not_a_bounce(self, kind: str):
        self.kind = kind
        self.recipients = []
        self.score = 0.0

    def _lamson_score(self, parts):
        found: dict = {}
        for part, _inside in parts:
            for key in BOUNCE_MATCHERS:
                for value in header_values(part, key)[:1]:
                    found.setdefault(key, set()).add(value)
            if content_type(part) in ("message/delivery-status", "message/global-delivery-status"):
                _fields, groups = parse_dsn(dsn_text(part))
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
            ctype = content_type(part)
            desc = header(part, "Content-Description").lower().strip()
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
        return parse_message(part_bytes(part))

    def _notification_text(self, top) -> str:
        texts = []
        html = []
        for part in top:
            ctype = content_type(part)
            if ctype in ("message/rfc822", "message/global", "text/rfc822-headers"):
                break
            if ctype == "text/plain" or (ctype.startswith("text/") and ctype != "text/html"):
                texts.append(part_text(part))
            elif ctype.startswith("multipart/") and is_flat(part):
                # A multipart whose boundary never appears: its body is all we have.
                texts.append(decode_bytes(part_bytes(part), "utf-8"))
            elif ctype == "text/html":
                html.append(part_text(part))
        text = "\n".join(texts) if texts else "\n".join(html)
        return text[:MAX_TEXT]

    # -- DSN ----------------------------------------------------------------

    def _take_dsn(self, report):
        self.recipients = report.recipients
        self.delay_warning = report.delay_warning
        self.reporting_mta = report.reporting_mta
        self.remote_mta = report.remote_mta
        self.diagnostic_codes = report.diagnostic_codes
        self.action = report.action

    # -- finishing ------------------------------------------------------------

    def _finish(self, region: str, strong: bool):
        if self.recipients:
            self.final_recipient = self.recipients[0].address
            status = self.status
            parts = status_parts(status)
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
                    self.diagnostic_codes = (enhanced_status(diag) or reply_code(diag), diag)
            if self.action is None:
                self.action = self.recipients[0].action
        if self.reporting_mta is None:
            m = re.search(r"(?:program|agent|server) at (?:host )?([\w.-]+\w)", region, re.I)
            if m:
                self.reporting_mta = m.group(1)
        self.score = max(self.header_score, _RECOGNISED_FLOOR if (strong or self.recipients) else 0.3)


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------


def detect(msg) -> BounceAnalyzer:
    """
    Analyse C{msg} (an C{email.message.Message}, or the raw bytes or text of
    one) and return a L{BounceAnalyzer}.  Never raises.
    """
    return BounceAnalyzer(repair_multipart(parse_message(msg)))


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

