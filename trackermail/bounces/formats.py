# -*- test-case-name: tests.bounces.test_formats -*-
"""
Bounces without a delivery-status part: the plain-text reports of qmail,
Exim, Postfix, Sendmail, Exchange, Gmail, Yahoo and friends, and Amazon
SES JSON notifications.  Also what tells a bounce from an auto-reply.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from email.message import Message
from typing import Optional

from trackermail.bounces.codes import enhanced_status, failure_status, status_parts
from trackermail.bounces.dsn import FailedRecipient, dedupe, diagnostic_text
from trackermail.bounces.mime import addresses_in, clean_address, header, header_values
from trackermail.bounces.reasons import classify, judge_hard

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

_DELAY_TEXT = re.compile(
    r"has been delayed|will be retried|still being retried|warning message only|"
    r"not yet been delivered|delivery attempts will continue|will continue to (try|attempt)|"
    r"do not need to resend|no action is required|delayed \d+ (hour|minute|day)|"
    r"\(delay\)|temporarily deferred",
    re.I,
)


def strong_evidence(region: str, subject: str) -> bool:
    """
    Whether the report text or the subject says, on its own, that this is
    a delivery failure report.
    """
    return bool(_STRONG_BODY.search(region)) or bool(_STRONG_BODY.search(subject))


def weak_evidence(region: str) -> bool:
    """
    Whether the report text talks like a bounce (not enough on its own).
    """
    return bool(_WEAK_BODY.search(region))


def bounce_subject(subject: str) -> bool:
    """
    Whether C{subject} is one bounces use.
    """
    return bool(_SUBJECT_BOUNCE.search(subject))


def daemon_sender(sender: str) -> bool:
    """
    Whether the C{From} value names a mailer daemon or a postmaster.
    """
    return bool(_FROM_DAEMON.search(sender))


def lists_addresses(region: str) -> bool:
    """
    Whether the report text lists an address the way bounces list failed
    recipients.
    """
    return any(_LIST_LINE.match(line) for line in region.split("\n")[:200] if "@" in line)


def looks_autoreply(msg: Message, subject: str) -> bool:
    """
    Whether C{msg} says it is an auto-reply (RFC 3834 headers, vacation
    subjects).
    """
    auto = header(msg, "Auto-Submitted").lower()
    if auto.startswith("auto-replied"):
        return True
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Vacation",
                 "X-Auto-Reply", "X-Autoreply-From", "X-Mail-Autoreply"):
        if header_values(msg, name):
            return True
    precedence = header(msg, "Precedence").lower()
    if precedence in ("auto_reply", "autoreply"):
        return True
    return bool(_AUTOREPLY_SUBJECT.search(subject))


def cut_original(text: str) -> str:
    """
    The report part of a plain-text bounce: C{text} up to where the copy
    of the returned message begins.
    """
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


def ses_recipients(text: str) -> Optional[tuple[bool, list[FailedRecipient]]]:
    """
    None when C{text} is not an Amazon SES notification; otherwise whether
    it reports a bounce, and the bounced recipients.
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
        return False, []
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
        address = clean_address(str(data.get("emailAddress", "")))
        if not address:
            continue
        status = data.get("status") or enhanced_status(str(data.get("diagnosticCode", "")))
        status = ".".join(status_parts(status)) if status_parts(status) else None
        diag = str(data.get("diagnosticCode") or "")
        action = data.get("action") or None
        hard = judge_hard(action, status, diag, permanent)
        reason = classify(status, diag, action=action if isinstance(action, str) else None)
        recipients.append(FailedRecipient(address, status, hard, diagnostic_text(diag) or None,
                                          action, reason=reason))
    return True, dedupe(recipients)


def _excluded(msg: Message, original) -> set[str]:
    # Addresses of the report and of the returned message's author: never
    # the failed recipient, unless a line says so explicitly.
    out = set()
    sources = [(msg, ("From", "To", "Cc", "Reply-To", "Return-Path", "Sender",
                       "Errors-To"))]
    if isinstance(original, Message):
        sources.append((original, ("From", "Sender", "Return-Path", "Reply-To",
                                    "Errors-To")))
    for part, names in sources:
        for name in names:
            for value in header_values(part, name):
                for a in addresses_in(value):
                    out.add(a.lower())
    return out


def text_recipients(msg: Message, original, region: str,
                    notification: str) -> tuple[list[FailedRecipient], bool]:
    """
    The failed recipients of a plain-text bounce, and whether it only warns
    of a delay.  C{region} is the report part of C{notification} (see
    L{cut_original}); C{original} the returned message when attached.
    """
    excluded = _excluded(msg, original)
    candidates: dict[str, _Candidate] = {}

    def add(addr, tier, diag):
        key = addr.lower()
        if key in excluded and tier > 1:
            return
        old = candidates.get(key)
        if old is None or tier < old.tier:
            candidates[key] = _Candidate(addr, tier, diag if old is None else old.diagnostic or diag)

    for value in header_values(msg, "X-Failed-Recipients"):
        for a in addresses_in(value):
            add(a, 0, "")

    lines = region.split("\n")
    trigger_until = -1
    for i, line in enumerate(lines):
        found = addresses_in(line)
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
    if isinstance(original, Message):
        for name in ("To", "Cc"):
            for value in header_values(original, name):
                for a in addresses_in(value):
                    add(a, 5, "")
    else:
        # Plain-text copy of the original after the marker.
        rest = notification[len(region):]
        for m in re.finditer(r"(?im)^>?\s?To:\s*(.+)$", rest[:20000]):
            for a in addresses_in(m.group(1)):
                add(a, 5, "")
            break

    if not candidates:
        return [], False
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
        re.search(r"delay|warning", header(msg, "Subject"), re.I)
        and not re.search(r"fail|returned|undeliver", header(msg, "Subject"), re.I))
    groups = "groups.google.com" in region.lower()
    recipients = []
    for c in chosen:
        diag = c.diagnostic or ""
        status = failure_status(diag)
        action = "delayed" if delay else "failed"
        hard = judge_hard(action, status, diag, True)
        reason = classify(status, diag, action=action)
        if reason in ("onhold", "undefined") and len(chosen) == 1:
            # The only recipient: the whole report is about it.
            reason = classify(status, region, action=action)
        if groups and reason == "onhold" and c.address.lower().endswith("@googlegroups.com"):
            # Google Groups refuses a post (no such group, or we may not
            # post to it) in the sender's language: it is about us.
            reason = "rejected"
        recipients.append(FailedRecipient(c.address, status, hard, diagnostic_text(diag) or None,
                                          action, reason=reason))
    return dedupe(recipients), delay


_NEW_SESSION = re.compile(r"(?i)^\s*(?:\.\.\.\s*)?while talking to ")
_REPLY_CODE = re.compile(r"(?<![\w.])[45]\d\d(?![\w.])")
_LEADING_ADDRESS = re.compile(r"^\s*[<(\[\"]?([^\s<>()\[\]\"@]+@[^\s<>()\[\]\"]+?)[>)\]\"]?(?:\s|:|$)")


def _diagnostic_after(lines: list[str], i: int) -> str:
    """
    The text that explains the address on line C{i}: the rest of that line
    and what follows, up to the line naming another recipient.
    """
    own = {a.lower() for a in addresses_in(lines[i])}
    chunk = [lines[i].strip()]
    indent = len(lines[i]) - len(lines[i].lstrip())
    blanks = 0
    for line in lines[i + 1:i + 12]:
        if not line.strip():
            blanks += 1
            if blanks > 2:
                break
            continue
        if not blanks and len(line) - len(line.lstrip()) > indent:
            # A folded continuation of the text (Postfix's "said: 553\n
            # 5.1.8 <sender>... does not exist"): whatever address it names.
            chunk.append(line.strip())
            continue
        blanks = 0
        m = _LIST_LINE.match(line) if "@" in line else None
        if m and m.group("addr").strip("<>.,;:").lower() not in own:
            break
        lead = _LEADING_ADDRESS.match(line)
        if lead and lead.group(1).lower() not in own:
            # The next recipient's own line.
            break
        if _ORIGINAL_MARKER.search(line):
            break
        if _NEW_SESSION.match(line) and _REPLY_CODE.search(chunk[0]):
            # The recipient's line gave its error (old Sendmail's "554
            # <addr>... 550 Host unknown"): the next session is another's.
            break
        chunk.append(line.strip())
    return " ".join(chunk)


def text_about(region: str, address: str) -> str:
    """
    What the report text C{region} says about C{address}: the line naming
    it and the lines explaining it; C{""} when it does not name it.
    """
    lines = region.split("\n")
    low = address.lower()
    for i, line in enumerate(lines):
        if low in line.lower():
            return _diagnostic_after(lines, i)
    return ""


def _diagnostic_for(region: str, address: str) -> str:
    lines = region.split("\n")
    for i, line in enumerate(lines):
        if address.lower() in line.lower():
            return _diagnostic_after(lines, i)
    return region[:500]
