# -*- test-case-name: tests.control.test_handler -*-
"""
The C{control@FQDN} service: one control mail in, one reply (and the
confirmation mails and notices it asks for) out.

L{handle_control} is a store program: the processor runs it in the same
transaction as the processed-ledger row, so the changes a mail makes, its
reply and its CONFIRM mails are committed together or not at all.

Replies are capped per sender and day (C{[control] max_replies_per_day},
counted like the other budgets, see L{trackermail.store.budgets}), to limit
backscatter to forged senders: the reply that reaches the cap says so, and
later mails that day are dropped unanswered, unless they carry proof (a
confirm key or an unsubscribe token), which is always acted on and
answered. Such a proven reply does not count: each key and token works
once, so they cannot be replayed into a flood, and a subscriber's own
unsubscriptions must not use up the replies to the rest of their mail.
The reply is never copied to other addresses: whoever is asked to confirm
gets a CONFIRM mail that names who asked.
"""

from __future__ import annotations

import re
from itertools import chain

from trackermail.control import texts
from trackermail.control.commands import execute
from trackermail.control.parser import (
    MAX_COMMANDS,
    MAX_ERRORS,
    SKIP,
    STOP,
    Command,
    NotCommand,
    lines_of,
    parse,
    subject_line,
)
from trackermail.control.session import Session
from trackermail.control.stored import describe
from trackermail.errors import InvalidValue
from trackermail.handling import Outcome
from trackermail.message import (
    build_mail,
    header,
    header_address,
    header_values,
    plain_text,
)
from trackermail.store.budgets import budget_key, count_reply, replies_today
from trackermail.store.confirmations import reserve_key
from trackermail.store.outbox import enqueue
from trackermail.validation import normalize_email

_MSGID = re.compile(r"<[^<>\s]{1,250}>")
_MAX_REFERENCES = 10
_MAX_SUBJECT = 150


def handle_control(incoming, ctx):
    """
    Read a control mail, run its commands, queue the reply, the
    confirmation mails and the notices. Fires with an L{Outcome}:
    C{dropped} (never answered, with the reason), C{ignored} (no command in
    it) or C{replied}.
    """
    msg = incoming.msg
    control = f"control@{ctx.fqdn}"
    reason = drop_reason(incoming, control)
    if reason is not None:
        return Outcome("dropped", reason)
    sender = sender_address(incoming)
    if sender is None:
        return Outcome("dropped", "no usable sender address")
    if sender.lower().endswith("@" + ctx.fqdn.lower()):
        return Outcome("dropped", "mail from the tracker's own domain")

    session = Session(ctx, sender)
    cap = session.reply_cap
    if cap:
        session.proof_only = (yield from replies_today(sender, ctx.today)) >= cap
    subject = subject_line(msg)
    text = plain_text(msg)
    out, commands = yield from transcript(session, subject, text or "")
    if text is None:
        out += [texts.NO_PLAIN_TEXT, ""]
    elif commands == 0:
        return Outcome("ignored", "no command in the mail")
    if session.proof_only and not session.proven:
        return Outcome("dropped", f"{budget_key(sender)} already got {cap} replies today",
                       {"commands": commands})

    while out and out[-1] == "":
        out.pop()
    sent = yield from _send_confirmations(session, out)
    notices = yield from _send_notices(session)
    if cap and not session.proven:
        count = yield from count_reply(sender, ctx.today)
        if count >= cap:
            out += ["", texts.REPLY_CAP_REACHED.format(cap=cap, email=sender)]
    body = "\n".join(out + [""] + texts.reply_footer(ctx.fqdn, control)) + "\n"
    reply = build_mail(
        fqdn=ctx.fqdn,
        from_=control,
        to=sender,
        subject="Re: " + texts.show(subject or "(no subject)", _MAX_SUBJECT),
        body=body,
        headers=_bot_headers(control) + _thread_headers(msg),
        now=ctx.now,
    )
    yield from enqueue(reply, [(sender, "")], ctx.now, origin=ctx.origin)
    return Outcome(
        "replied",
        f"{commands} commands",
        {"commands": commands, "confirmations": sent, "notices": notices,
         "proven": session.proven},
    )


def _send_confirmations(session: Session, out: list):
    """
    Queue one CONFIRM mail per address that has commands waiting, or put
    the key at the end of the reply (C{out}) when the address is the
    sender and its budget is spent. Fires with the number of mails queued.
    """
    ctx = session.ctx
    days = ctx.config.control.confirmation_expiry_days
    sent = 0
    for pending in session.pending.values():
        if not pending.commands or not (pending.mailed or pending.inline):
            continue
        key, listed = yield from reserve_key(
            pending.email, pending.commands, ctx.now, session.expiry
        )
        lines = [describe(c) for c in listed]
        if not pending.mailed:
            out += [""] + texts.inline_confirmation(
                email=pending.email, control=session.control, key=key, lines=lines, days=days)
            continue
        body = texts.confirmation_body(
            requester=session.sender, email=pending.email, fqdn=ctx.fqdn,
            control=session.control, key=key, lines=lines, days=days,
        )
        mail = build_mail(
            fqdn=ctx.fqdn,
            from_=session.control,
            to=pending.email,
            subject=texts.CONFIRMATION_SUBJECT.format(key=key),
            body=body,
            headers=_bot_headers(session.control),
            now=ctx.now,
        )
        yield from enqueue(mail, [(pending.email, "")], ctx.now, origin=ctx.origin)
        sent += 1
    return sent


def _send_notices(session: Session):
    """Queue one notice mail per address changed without its asking."""
    ctx = session.ctx
    sent = 0
    for notice in session.notices.values():
        if not notice.allowed or not notice.lines:
            continue
        mail = build_mail(
            fqdn=ctx.fqdn,
            from_=session.control,
            to=notice.email,
            subject=texts.NOTICE_SUBJECT,
            body=texts.notice_body(email=notice.email, fqdn=ctx.fqdn,
                                   control=session.control, lines=notice.lines),
            headers=_bot_headers(session.control),
            now=ctx.now,
        )
        yield from enqueue(mail, [(notice.email, "")], ctx.now, origin=ctx.origin)
        sent += 1
    return sent


def transcript(session: Session, subject: str, text: str):
    """
    Run the Subject and the body's lines; fires with C{(lines, commands)}:
    the reply's lines and how many command lines were read.

    A Subject that is not a command is ignored (it is usually just a
    subject); body lines that are not commands are echoed, answered and
    counted, and the fifth stops the reading.
    """
    out: list[str] = []
    seen: set = set()
    errors = commands = 0
    lines = chain([(True, subject)], ((False, line) for line in lines_of(text)))
    for from_subject, line in lines:
        parsed = parse(line)
        if parsed is SKIP:
            continue
        if from_subject and not isinstance(parsed, Command):
            continue
        if isinstance(parsed, Command) and commands >= MAX_COMMANDS:
            out.append(texts.STOP_TOO_MANY.format(n=MAX_COMMANDS))
            break
        out.append(texts.echo(line))
        if parsed is STOP:
            out.append(texts.STOP_QUIT)
            break
        if isinstance(parsed, NotCommand):
            out.append(texts.LINE_TOO_LONG if parsed.too_long else texts.NOT_A_COMMAND)
            errors += 1
            if errors >= MAX_ERRORS:
                out.append(texts.STOP_ERRORS.format(n=MAX_ERRORS))
                break
            out.append("")
            continue
        commands += 1
        key = session.dedup_key(parsed)
        if key in seen:
            out.append(texts.DUPLICATE)
        else:
            seen.add(key)
            out.extend((yield from execute(session, parsed)))
        out.append("")
    return out, commands


def drop_reason(incoming, control: str) -> str | None:
    """
    Why this mail must get no answer at all (a loop, an automatic mail:
    RFC 3834), or None.
    """
    msg = incoming.msg
    for value in header_values(msg, "X-Loop"):
        if control.lower() in value.lower():
            return f"X-Loop: {control}"
    auto = header(msg, "Auto-Submitted", "").split(";")[0].strip().lower()
    if auto and auto != "no":
        return "Auto-Submitted: " + texts.show(auto, 40)
    precedence = header(msg, "Precedence", "").strip().lower()
    if precedence in ("bulk", "junk", "list"):
        return f"Precedence: {precedence}"
    if incoming.envelope_from == "":
        return "null envelope sender"
    return None


def sender_address(incoming) -> str | None:
    """The address to answer: From:, else the envelope sender; None when neither is valid."""
    for candidate in (header_address(incoming.msg, "From"), incoming.envelope_from):
        if not candidate:
            continue
        try:
            return normalize_email(candidate)
        except InvalidValue:
            continue
    return None


def _bot_headers(control: str) -> list[tuple[str, str]]:
    return [("X-Loop", control), ("Auto-Submitted", "auto-replied")]


def _thread_headers(msg) -> list[tuple[str, str]]:
    msgid = _MSGID.fullmatch(header(msg, "Message-ID", "").strip())
    if msgid is None:
        return []
    references = _MSGID.findall(header(msg, "References", ""))
    references = references[-(_MAX_REFERENCES - 1):] + [msgid.group(0)]
    return [("In-Reply-To", msgid.group(0)), ("References", " ".join(references))]
