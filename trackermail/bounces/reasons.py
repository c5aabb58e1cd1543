# -*- test-case-name: tests.bounces.test_reasons -*-
"""
Why a recipient failed: the bounce reason, in Sisimai's vocabulary
(C{userunknown}, C{mailboxfull}, C{blocked}, ...), from the enhanced status
code, the SMTP reply code, the SMTP command that failed and the words of
the diagnostic.

The decision runs in three steps, as Sisimai's does:

  1. Reasons a text or a status can prove, checked in a fixed order (a full
     mailbox first, a blocked client last), each with its own rule: an
     unknown user needs a C{5.1.1}-like status or a refusal at RCPT time;
     a spam verdict is only believed after DATA; and so on.
  2. The reason the status code stands for (L{codes.status_reason}).  When
     it is vague (C{5.0.0}, C{systemerror}, ...) the text may still name a
     better one; then the status class (C{x.6} content, C{x.7} security)
     and the reply code (C{50x} syntax) are used.
  3. What is left: a delay is C{expired}, a report with some text
     C{onhold} (the text says nothing we understand), and a report without
     any C{undefined}.

L{reason_group} sorts reasons into what the bounce policy acts on;
L{reply_reason} classifies a single SMTP reply from a smarthost;
L{is_spam_rejection} tells a refusal of our mail for what it is.
"""

from __future__ import annotations

import re
from typing import Optional

from trackermail.bounces.codes import (
    failure_status,
    reply_code,
    status_parts,
    status_reason,
)
from trackermail.bounces.phrases import PHRASES, words
from trackermail.bounces.providers import provider_reason

__all__ = [
    "GONE",
    "OURS",
    "PERSISTENT_SOFT",
    "REASONS",
    "classify",
    "is_spam_rejection",
    "judge_hard",
    "reason_group",
    "reply_reason",
    "smtp_command",
]

# Sisimai's vocabulary, less "delivered", "feedback" and "vacation" (which
# are not failures).
REASONS = (
    "userunknown", "hostunknown", "mailboxfull", "exceedlimit", "hasmoved", "suspend",
    "notaccept", "filtered", "rejected", "blocked", "spamdetected", "virusdetected",
    "policyviolation", "securityerror", "authfailure", "requireptr", "badreputation",
    "norelaying", "toomanyconn", "speeding", "expired", "networkerror", "systemerror",
    "systemfull", "mailererror", "mesgtoobig", "contenterror", "syntaxerror",
    "notcompliantrfc", "onhold", "undefined",
)


# Step 1: reasons the text (with the status or the command) proves, in this
# order.  Step 2: what the text may name when the status is vague.
_FIRST = ("mailboxfull", "mesgtoobig", "exceedlimit", "suspend", "hasmoved", "norelaying",
          "authfailure", "userunknown", "filtered", "requireptr", "notcompliantrfc",
          "badreputation", "notaccept", "rejected", "hostunknown", "securityerror", "speeding",
          "toomanyconn", "client", "virusdetected", "spamdetected", "blocked")
_SECOND = ("mailboxfull", "spamdetected", "policyviolation", "virusdetected", "norelaying",
           "authfailure", "badreputation", "securityerror", "systemerror", "networkerror",
           "speeding", "suspend", "expired", "contenterror", "systemfull", "notaccept",
           "mailererror", "syntaxerror")
# Reasons a status code names only vaguely: the text may know better.
_VAGUE = {None, "undefined", "onhold", "systemerror", "securityerror", "expired", "suspend",
          "networkerror", "hostunknown", "userunknown"}
# Reasons a status code names too clearly for a text of unknown context
# (no SMTP command) to overrule with "unknown user".
_DEFINITE = {"rejected", "mailboxfull", "exceedlimit", "mesgtoobig", "hasmoved", "systemfull",
             "notaccept", "contenterror", "toomanyconn", "filtered"}
# A status saying "unknown user" is not believed when the text says these.
_NOT_UNKNOWN = ("norelaying", "blocked", "mailboxfull", "hasmoved", "rejected", "notaccept",
                "filtered", "speeding")
# SMTP commands after which the message content has not been seen yet.
_BEFORE_DATA = {"CONN", "HELO", "EHLO", "MAIL", "RCPT"}

_TYPE_RE = re.compile(r"\s*([A-Za-z][\w-]{1,30})\s*;\s*")
_ADDRESS_RE = re.compile(r"<?[^\s<>@\"]+@[^\s<>\"]+>?")
_SPACES_RE = re.compile(r"\s+")

_COMMAND_RES = (
    (re.compile(r"in reply to (?:the )?(rcpt to|mail from|end of data|data|helo|ehlo|lhlo|"
                r"xforward|starttls|auth|quit)\b"), None),
    (re.compile(r"(?:error|failed|failure)? ?(?:from remote (?:mail server|mailer) )?after "
                r"(rcpt to|mail from|end of data|data|helo|ehlo|lhlo|initial connection|"
                r"sending (?:rcpt|mail|data))\b"), None),
    (re.compile(r"did not like our (rcpt to|mail from|data|helo|ehlo)"), None),
    (re.compile(r"most progress was (rcpt to|mail from|data|helo|ehlo)"), None),
    (re.compile(r">>> ?(rcpt to|mail from|data|helo|ehlo|lhlo)\b"), None),
    (re.compile(r"smtp command:? ?(rcpt|mail|data|helo|ehlo)\b"), None),
    (re.compile(r"\bsmtp:(rcpt|mail|data|helo|ehlo)\b"), None),
    (re.compile(r"does not like (recipient)"), "RCPT"),
    (re.compile(r"does not like (sender)"), "MAIL"),
    (re.compile(r"(failed after i sent the message)"), "DATA"),
    (re.compile(r"but (sender) was rejected"), "MAIL"),
    (re.compile(r"but (my name) was rejected"), "HELO"),
    (re.compile(r"(refused to talk to me)"), "CONN"),
    (re.compile(r"while talking to [^:\s]+:?\s+(<<<)"), "CONN"),
    (re.compile(r"(greeting) (?:failed|was rejected)|(?:refused|rejected) (?:the )?(connection)"),
     "CONN"),
)


def smtp_command(text: str) -> Optional[str]:
    """
    The SMTP command a diagnostic says the refusal answered (C{"RCPT"},
    C{"MAIL"}, C{"DATA"}, C{"HELO"}, C{"EHLO"}, C{"CONN"}), or None.
    """
    if not text:
        return None
    low = text.lower()
    for regex, fixed in _COMMAND_RES:
        m = regex.search(low)
        if m:
            if fixed:
                return fixed
            word = m.group(1)
            if word.startswith("rcpt") or word == "sending rcpt":
                return "RCPT"
            if word.startswith("mail") or word == "sending mail":
                return "MAIL"
            if word in ("data", "end of data", "sending data"):
                return "DATA"
            if word in ("helo", "ehlo", "lhlo"):
                return "EHLO" if word == "lhlo" else word.upper()
            if word == "initial connection":
                return "CONN"
            return None
    return None


def _normalise(text: str) -> str:
    text = _ADDRESS_RE.sub(" ", text[:4000].lower())
    return _SPACES_RE.sub(" ", text).strip()


# "Recipient address rejected" is about the recipient, not the sender.
_NOT_SENDER = words(r"recipient address rejected", r"sender ip address rejected",
                     r"5\.1\.0 address rejected")


def _says(reason: str, text: str) -> bool:
    if reason == "rejected" and _NOT_SENDER.search(text):
        return False
    return PHRASES[reason].search(text) is not None


def _proves(reason: str, text: str, by_status: Optional[str], command: Optional[str]) -> bool:
    """
    Step 1: whether C{text}, C{by_status} (the status code's reason) and
    C{command} prove C{reason}.
    """
    if reason == "userunknown":
        if by_status == "suspend" or command == "MAIL":
            # Refused at MAIL FROM: the sender's address, not the recipient's.
            return False
        if by_status == "userunknown":
            return not any(_says(other, text) for other in _NOT_UNKNOWN)
        if command is None and by_status not in _VAGUE:
            return False
        return command in (None, "RCPT") and _says(reason, text)
    if reason == "filtered":
        if by_status == "suspend":
            return False
        if by_status == "filtered":
            return (_says("userunknown", text) or _says("filtered", text)
                    or "message filtered" in text)
        if command in ("RCPT", "MAIL") or (command is None and by_status in _DEFINITE):
            return False
        return _says("filtered", text) or _says("userunknown", text)
    if reason == "rejected":
        if by_status == "rejected":
            return True
        if command == "MAIL" and (by_status in ("userunknown", "hostunknown")
                                  or "access denied" in text):
            return True
        if command == "MAIL" or (command == "DATA" and by_status != "userunknown") or (
                by_status in (None, "onhold", "undefined", "securityerror", "systemerror")):
            return _says("rejected", text)
        return False
    if reason == "hostunknown":
        if by_status == "hostunknown":
            return not _says("networkerror", text)
        return _says(reason, text)
    if reason == "mesgtoobig":
        if by_status == "mesgtoobig":
            return True
        if by_status == "exceedlimit":
            return "recipsizelimit" in text
        return _says(reason, text)
    if reason in ("spamdetected", "virusdetected"):
        if by_status == reason:
            return True
        if by_status == "contenterror":
            # A media or format error, whatever words it uses.
            return False
        return command not in _BEFORE_DATA and _says(reason, text)
    if reason in ("suspend", "hasmoved", "speeding", "badreputation", "notcompliantrfc",
                  "notaccept", "securityerror", "client"):
        return _says(reason, text)
    if reason == "blocked" and command in ("CONN", "HELO", "EHLO") and by_status is None:
        # Refused before the envelope, for no reason the status tells: the
        # client was.
        return True
    return by_status == reason or _says(reason, text)


def classify(status: Optional[str] = None, diagnostic: Optional[str] = "", *,
             action: Optional[str] = None, reply: Optional[str] = None,
             command: Optional[str] = None, diagnostic_type: Optional[str] = None) -> str:
    """
    The bounce reason of one failed recipient (one of L{REASONS}).

    @param status: the enhanced status code (C{"5.1.1"}), if known.
    @param diagnostic: the remote server's or the MTA's explanation.
    @param action: the DSN action (C{"failed"}, C{"delayed"}).
    @param reply: the SMTP reply code; found in C{diagnostic} when not given.
    @param command: the SMTP command refused (C{"RCPT"}, ...); found in
        C{diagnostic} when not given.
    @param diagnostic_type: the DSN diagnostic type (C{"smtp"}, C{"x-unix"}).
    """
    raw = diagnostic if isinstance(diagnostic, str) else ""
    kind = _TYPE_RE.match(raw)
    if kind:
        # "smtp; 550 ...": the type is not part of the explanation.
        diagnostic_type = diagnostic_type or kind.group(1)
        raw = raw[kind.end():]
    text = _normalise(raw)
    if status is None:
        status = failure_status(raw)
    parts = status_parts(status)
    if parts and parts[0] == "2":
        return "undefined"
    by_status = status_reason(status)
    if reply is None:
        reply = reply_code(raw)
    if command is None:
        command = smtp_command(raw)
    # Only a mailer's own types (a pipe's exit status) are not SMTP talk,
    # unless they quote a remote server's reply.
    dtype = (diagnostic_type or "smtp").strip().lower()
    if dtype not in ("x-unix", "x-postfix") or reply or " said:" in text:
        dtype = "smtp"
    action = (action or "").strip().lower()

    named = provider_reason(text, status)
    if named:
        return named

    if dtype == "smtp":
        for reason in _FIRST:
            if _proves(reason, text, by_status, command):
                return "blocked" if reason == "client" else reason

    reason = by_status
    if reason in _VAGUE or dtype != "smtp":
        named = next((r for r in _SECOND if _says(r, text)), None)
        if named:
            return named
    if reason is None:
        klass = parts[1] if parts else None
        if klass == "6":
            reason = "contenterror"
        elif klass == "7":
            reason = "securityerror"
        elif dtype in ("x-unix", "x-postfix"):
            reason = "mailererror"
        elif reply and re.match(r"[45]0[0-7]$", reply):
            reason = "syntaxerror"
        elif action.startswith(("delayed", "expired")):
            reason = "expired"
        elif command in ("HELO", "EHLO", "CONN"):
            reason = "blocked"
    if reason:
        return reason
    if action.startswith("delayed"):
        return "expired"
    if text:
        return "onhold"
    return "undefined"


def reply_reason(code, text: str = "", command: str = "RCPT") -> str:
    """
    The bounce reason of a single SMTP reply, as a smarthost gives it for a
    recipient (C{550}, C{"5.1.1 <a@b>: Recipient address rejected: User
    unknown"}): read like the diagnostic of a DSN that failed at C{command}.
    """
    try:
        code = str(int(code))
    except (TypeError, ValueError):
        code = ""
    text = text if isinstance(text, str) else ""
    action = "delayed" if code.startswith("4") else "failed"
    return classify(failure_status(text), ("%s %s" % (code, text)).strip(), action=action,
                    reply=code or None, command=command)


# ---------------------------------------------------------------------------
# Reason groups, for the bounce policy
# ---------------------------------------------------------------------------

# The refusal is about our mail or our server, not about the address.
OURS = frozenset({
    "blocked", "badreputation", "spamdetected", "virusdetected", "requireptr",
    "authfailure", "securityerror", "norelaying", "toomanyconn", "speeding", "rejected",
    "notcompliantrfc", "contenterror", "mesgtoobig", "syntaxerror",
})
# The address is gone: no such user or domain, moved, disabled.
GONE = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept", "suspend"})
# The address exists but cannot take mail for now, or the report says too
# little to tell.
PERSISTENT_SOFT = frozenset({"mailboxfull", "exceedlimit", "onhold", "undefined"})

# A policy refusal is ours when it is about the message or its sender.
_SENDER_POLICY = words(
    r"\bsender", r"\bfrom:? (?:header|address|domain)", r"\bheader", r"attachment", r"content",
    r"mass mailer", r"(?:your|this|the) (?:message|e-?mail|mail|ip|domain|server)",
    r"dmarc", r"\bspf\b", r"\bdkim\b", r"organizational settings", r"organization policy",
    r"not accepted for policy reasons", r"security polic",
)


def reason_group(reason: Optional[str], diagnostic: Optional[str] = "") -> str:
    """
    Sort a bounce reason into what the bounce policy does with it:

      - C{"ours"}: the refusal is about our mail or our server (blocked,
        spam, bad reputation, authentication, relaying, rate limits, our
        envelope sender, our message's form or size; a policy violation
        when C{diagnostic} names the sender or the message);
      - C{"gone"}: the address does not exist any more (unknown user or
        domain, moved, suspended, a domain that takes no mail);
      - C{"persistent-soft"}: the mailbox exists but is full or over a
        limit, or the bounce was recognised but says nothing readable;
      - C{"other"}: the rest (filters, expiry, network and system errors).
    """
    if reason in OURS:
        return "ours"
    if reason in GONE:
        return "gone"
    if reason in PERSISTENT_SOFT or not reason:
        return "persistent-soft"
    if reason == "policyviolation" and isinstance(diagnostic, str) and _SENDER_POLICY.search(
            _normalise(diagnostic)):
        return "ours"
    return "other"


# ---------------------------------------------------------------------------
# Refusals of our mail for what it is
# ---------------------------------------------------------------------------

# Reasons that refuse the message or its sender, never the recipient.
_CONTENT_REASONS = frozenset({
    "spamdetected", "virusdetected", "blocked", "badreputation", "authfailure",
    "requireptr", "policyviolation",
})

# Diagnostics are short; past this is returned message content.
_MAX_SCAN = 1 << 20
# How far a reply may run on after the line holding its code.
_MAX_CONTINUATION_LINES = 8
_MAX_WINDOW = 1000
# Each reply found costs at most _MAX_WINDOW characters of work.
_MAX_REPLIES = 200

# A 55x code standing alone: not part of a longer number or of a dotted
# status/version, and followed by a blank, a "-" (multi-line reply) or the end.
_CODE_RE = re.compile(r"(?<![\w.])55[0-9](?=[ \t-]|$)")
# A DSN Diagnostic-Code of type smtp whose text has no reply code at all
# (Google Groups writes its spam verdicts so).
_BARE_DIAGNOSTIC_RE = re.compile(
    r"^[ \t]*Diagnostic-Code:[ \t]*smtp[ \t]*;[ \t]*(?![0-9]{3}(?![0-9]))(?=\S)", re.IGNORECASE)
# Addresses, URLs and host names say who, not why: the bounce of
# nospam@example.org is still about the address.
_NOISE_RE = re.compile(
    r"""
      <[^<>\n]{0,300}>                 # <addr>, <url>
    | \b[a-z][a-z0-9+.-]{0,20}://\S*   # URLs
    | (?<!\S)\S*@\S*                    # bare addresses
    | (?<![\w-])[\w-]+(?:\.[\w-]+)+    # host names, dotted numbers
    """,
    re.IGNORECASE | re.VERBOSE,
)
_LEADING_STATUS_RE = re.compile(r"55[0-9][ \t-]+([245]\.[0-9]{1,3}\.[0-9]{1,3})(?![\w.])")


def _reply_window(lines: list[str], index: int, start: int) -> str:
    """
    The reply whose code is at C{lines[index][start:]}, with the lines that
    continue it (folded lines, further lines of a multi-line reply).
    """
    first = lines[index][start:start + _MAX_WINDOW]
    code, more = first[:3], first[3:4] == "-"
    parts = [first]
    size = len(first)
    for line in lines[index + 1:index + 1 + _MAX_CONTINUATION_LINES]:
        if size >= _MAX_WINDOW:
            break
        if more and line[:3] == code and line[3:4] in ("-", " ", "\t", ""):
            more = line[3:4] == "-"
        elif not (line[:1].isspace() and line.strip()):
            break
        parts.append(line.strip())
        size += len(line)
    return " ".join(parts)[:_MAX_WINDOW]


def _refuses_content(window: str) -> bool:
    m = _LEADING_STATUS_RE.match(window)
    status = m.group(1) if m else None
    if status and status_parts(status)[1] in ("1", "2"):
        # About the address or the mailbox, whatever words follow.
        return False
    text = _NOISE_RE.sub(" ", window)
    reason = classify(status, text, command="DATA")
    if reason in _CONTENT_REASONS:
        return reason != "policyviolation" or reason_group(reason, text) == "ours"
    return False


def is_spam_rejection(text) -> bool:
    """
    Whether C{text} holds a 55x SMTP rejection of our mail as spam, malware
    or otherwise for what it is (sender reputation, authentication, a
    content policy) rather than for its recipient: whether the reply's
    reason (L{classify}) is one of those.

    @param text: diagnostic text of a bounce, or an SMTP reply with its
        code.  Bytes are read as UTF-8, with errors replaced.
    @return: C{False} for anything else, including C{"550 5.1.1 user
        unknown"}, C{"552 5.2.2 mailbox full"}, 4xx replies and text that
        is not an SMTP reply at all.  Never raises.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text[:_MAX_SCAN]).decode("utf-8", "replace")
    elif not isinstance(text, str):
        return False
    lines = text[:_MAX_SCAN].splitlines()
    budget = _MAX_REPLIES
    for index, line in enumerate(lines):
        bare = _BARE_DIAGNOSTIC_RE.match(line)
        if bare and _refuses_content(_reply_window(lines, index, bare.end())):
            return True
        for code in _CODE_RE.finditer(line):
            if _refuses_content(_reply_window(lines, index, code.start())):
                return True
            budget -= 1
            if budget == 0:
                return False
    return False


# ---------------------------------------------------------------------------
# Hard or soft
# ---------------------------------------------------------------------------

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


def judge_hard(action: Optional[str], status: Optional[str], diagnostic: str,
               default: Optional[bool]) -> Optional[bool]:
    """
    Whether a recipient failed for good (C{True}), for now (C{False}), or
    C{default} when nothing tells: the DSN action (a delay is soft), the
    status class, the reply code, a final action, then the words.
    """
    if action and action.lower().startswith("delay"):
        return False
    parts = status_parts(status)
    if parts and parts[0] in ("4", "5"):
        return parts[0] == "5"
    code = reply_code(diagnostic)
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
