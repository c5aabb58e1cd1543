# -*- test-case-name: tests.bounces.test_dsn -*-
"""
RFC 3464 delivery status notifications: the C{message/delivery-status}
part, its per-message and per-recipient fields, and the failed recipients
they report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from typing import Callable, Iterable, Optional

from trackermail.bounces.codes import enhanced_status, failure_status, status_parts
from trackermail.bounces.mime import (
    clean_address,
    part_bytes,
    unfold,
)
from trackermail.bounces.reasons import classify, judge_hard, smtp_command
from trackermail.message import decode_bytes, decode_raw_header


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
    @ivar reason: why it failed, one of L{reasons.REASONS}.
    """

    address: str
    status: Optional[str]
    hard: Optional[bool]
    diagnostic: Optional[str] = None
    action: Optional[str] = None
    remote_mta: Optional[str] = None
    reason: Optional[str] = None


def dsn_text(part: Message) -> str:
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
                lines.append("%s: %s" % (key, unfold(decode_raw_header(value))))
            try:
                body = group.get_payload()
            except Exception:
                body = None
            if isinstance(body, str) and body.strip():
                # Groups run together (no blank line): the rest sits in the body.
                lines.append(body)
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)
    return decode_bytes(part_bytes(part), "utf-8")


_DSN_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)\s*:\s?(.*)$")
RECIPIENT_FIELDS = ("final-recipient", "original-recipient", "x-actual-recipient")


def parse_dsn(text: str) -> tuple[dict, list[dict]]:
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
        if any(k in group for k in RECIPIENT_FIELDS):
            recipients.append(group)
        elif "status" in group or "action" in group:
            recipients.append(group)
        else:
            for k, v in group.items():
                message_fields.setdefault(k, v)
    return message_fields, recipients


# "smtp; 550 5.1.1 text": the type, the code and the text of a Diagnostic-Code.
DIAGNOSTIC_CODE = re.compile(r"(.+);\s*([0-9\-\.]+)?\s*(.*)", re.I | re.S)


@dataclass
class DSNReport:
    """
    What the delivery-status parts of a message say.

    @ivar recipients: the failed or delayed recipients.
    @ivar delivered: every recipient group reports a success (a success DSN).
    @ivar delay_warning: some recipient is only delayed.
    @ivar reporting_mta, remote_mta: the first ones named.
    @ivar diagnostic_codes: (code, text) of the first Diagnostic-Code.
    @ivar action: the first failed recipient's action.
    """

    recipients: list
    delivered: bool = False
    delay_warning: bool = False
    reporting_mta: Optional[str] = None
    remote_mta: Optional[str] = None
    diagnostic_codes: tuple = (None, None)
    action: Optional[str] = None


def read_dsn(dsn_texts: list[str], about: Optional[Callable[[str], str]] = None,
             whole: str = "") -> DSNReport:
    """
    The failed recipients of the delivery-status texts C{dsn_texts}.

    @param about: gives what the human-readable part of the report says
        about an address (C{""} when nothing): many MTAs put the SMTP
        command, or the whole reply, only there.
    @param whole: the human-readable part, taken as being about the
        recipient when the report has only one and C{about} finds nothing.
    """
    report = DSNReport([])
    recipients = []
    any_failure = False
    any_group = False
    parsed = [parse_dsn(text) for text in dsn_texts]
    alone = sum(len(groups) for _, groups in parsed) == 1
    for fields, groups in parsed:
        if report.reporting_mta is None and fields.get("reporting-mta"):
            report.reporting_mta = mta_name(fields["reporting-mta"])
        for group in groups:
            any_group = True
            action = (group.get("action") or "").strip().lower() or None
            status = group.get("status") or ""
            diag = group.get("diagnostic-code") or ""
            parts_ = status_parts(status)
            if action and re.match(r"(delivered|relayed|expanded)", action):
                continue
            if action is None and parts_ and parts_[0] == "2":
                continue
            any_failure = True
            address = None
            for key in RECIPIENT_FIELDS:
                address = clean_address(group.get(key, ""))
                if address:
                    break
            if not address:
                continue
            effective = status if parts_ else None
            # "5.0.0" says little: a more precise code in the text wins.
            better = enhanced_status(diag)
            if better and (not parts_ or (parts_[1:] == ("0", "0") and better[0] == parts_[0])):
                effective = better
            elif not parts_ and better:
                effective = better
            if effective:
                effective = ".".join(status_parts(effective))
            hard = judge_hard(action, effective, diag, None if action is None else True)
            if action and action.startswith("delay"):
                report.delay_warning = True
            note = (about(address) if about else "") or (whole if alone else "")
            if note:
                effective = _refine(effective, failure_status(note))
            explained = diag if _says_something(diag) else (note or diag)
            kind = _DIAGNOSTIC_TYPE.match(diag)
            reason = classify(
                effective, explained, action=action,
                command=smtp_command(diag) or smtp_command(note),
                diagnostic_type=kind.group(1) if kind else None)
            recipients.append(FailedRecipient(
                address=address, status=effective, hard=hard,
                diagnostic=diagnostic_text(explained) or None, action=action,
                remote_mta=mta_name(group.get("remote-mta", "")) or None, reason=reason,
            ))
            if report.diagnostic_codes == (None, None) and diag:
                m = DIAGNOSTIC_CODE.match(diag)
                if m:
                    report.diagnostic_codes = (m.group(2) or m.group(1), m.group(3) or None)
                else:
                    report.diagnostic_codes = (None, diag)
            if report.action is None and action:
                report.action = action
            if report.remote_mta is None and group.get("remote-mta"):
                report.remote_mta = mta_name(group["remote-mta"])
    if any_group and not any_failure:
        report.delivered = True
        return report
    report.recipients = dedupe(recipients)
    return report


_DIAGNOSTIC_TYPE = re.compile(r"\s*([A-Za-z][\w-]*)\s*;")
_WORD = re.compile(r"[A-Za-z]{3}")


def _says_something(diag: str) -> bool:
    # A Diagnostic-Code with words beyond its type and codes.
    kind = _DIAGNOSTIC_TYPE.match(diag)
    return _WORD.search(diag, kind.end() if kind else 0) is not None


def _refine(status: Optional[str], better: Optional[str]) -> Optional[str]:
    # A vague status ("5.0.0", none) gives way to a precise one of the same
    # class from the text: the class decides hard or soft, and stays.
    parts = status_parts(status)
    found = status_parts(better)
    if not found or found[1:] == ("0", "0"):
        return status
    if parts is None:
        return status
    if parts[1:] == ("0", "0") and found[0] == parts[0]:
        return ".".join(found)
    return status


def mta_name(value: str) -> Optional[str]:
    if not value:
        return None
    if ";" in value:
        value = value.split(";", 1)[1]
    return value.strip().strip("[]").strip() or None


def diagnostic_text(diag: str) -> str:
    diag = re.sub(r"\s+", " ", diag or "").strip()
    if ";" in diag[:12]:
        diag = diag.split(";", 1)[1].strip()
    return diag[:1000]


def dedupe(recipients: Iterable[Optional[FailedRecipient]]) -> list[FailedRecipient]:
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
