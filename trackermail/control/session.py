# -*- test-case-name: tests.control.test_consent -*-
"""
One control mail's state, and the consent rule.

Anyone can write to C{control@} with any From: line. So a change to an
address's subscriptions, keywords or team memberships is never made on the
word of a mail: L{Session.request} asks the address itself to confirm it,
with one CONFIRM mail per address and control mail carrying all that
address's waiting commands. Only proof changes something at once: a confirm
key (it reached the address it was mailed to) and the unsubscribe token of a
forwarded copy (it reached the subscriber); L{Session.proven} records that
the mail carried some.

Mails to an address on a stranger's word (CONFIRM mails, notices) are
counted against that address's daily budget (L{trackermail.store.budgets}).
When the budget is spent and the address is the sender itself, the key goes
into the reply, which the sender gets anyway.

The shared steps of the commands (reading an EMAIL, PACKAGE or TEAM
argument) live here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trackermail.control import texts
from trackermail.control.parser import Command
from trackermail.errors import InvalidValue
from trackermail.store.budgets import count_unsolicited
from trackermail.store.confirmations import canonical_command
from trackermail.store.keywords import keywords
from trackermail.store.packages import resolve_package
from trackermail.validation import check_package_name, check_slug, normalize_email


@dataclass
class Pending:
    """
    The commands of one mail waiting for one address's confirmation.
    C{mailed}: a CONFIRM mail goes out. C{inline}: the address's budget is
    spent but it is the sender, so the key goes into the reply.
    """

    email: str
    mailed: bool
    inline: bool
    commands: list = field(default_factory=list)


@dataclass
class Notice:
    """What one mail changed for an address that did not ask (a team member)."""

    email: str
    allowed: bool
    lines: list = field(default_factory=list)


class Session:
    """
    The state of one control mail: who sent it, when, the confirmations it
    asks for and the notices it sends (address, lowercased -> L{Pending} or
    L{Notice}), and whether it carried proof.
    """

    def __init__(self, ctx, sender: str):
        self.ctx = ctx
        self.sender = sender
        self.control = f"control@{ctx.fqdn}"
        self.now = ctx.now
        self.today = ctx.today
        self.secret = ctx.config.tracker.secret_key
        self.expiry = ctx.config.control.confirmation_expiry_days * 86400.0
        self.limit = ctx.config.control.max_confirmations_per_day
        self.reply_cap = ctx.config.control.max_replies_per_day
        self.pending: dict[str, Pending] = {}
        self.notices: dict[str, Notice] = {}
        #: A confirm key or an unsubscribe token of this mail did something.
        self.proven = False
        #: The sender's replies for today are used up: only proof is acted on.
        self.proof_only = False

    def is_sender(self, email: str) -> bool:
        return email.lower() == self.sender.lower()

    def dedup_key(self, cmd: Command) -> tuple:
        """Two lines asking for the same thing get the same key."""
        email = (cmd.email or self.sender).lower()
        return (cmd.name, cmd.usage, (cmd.package or "").lower(), email,
                (cmd.slug or "").lower(), cmd.key, cmd.op, cmd.keywords, cmd.token)

    def request(self, email: str, stored: list, out: list):
        """
        Ask C{email} to confirm C{stored} (a store program). The first
        request for an address in a mail decides, against its daily budget,
        whether a CONFIRM mail goes out.
        """
        key = email.lower()
        pending = self.pending.get(key)
        if pending is None:
            mailed = yield from count_unsolicited(email, self.today, self.limit)
            inline = not mailed and self.is_sender(email)
            pending = self.pending[key] = Pending(email, mailed, inline)
        if not (pending.mailed or pending.inline):
            out.append(texts.CONFIRMATION_LIMIT.format(email=email, limit=self.limit))
            return
        if canonical_command(stored) not in {canonical_command(c) for c in pending.commands}:
            pending.commands.append(stored)
        if pending.mailed:
            out.append(texts.CONFIRMATION_SENT.format(email=email))
        else:
            out.append(texts.CONFIRMATION_INLINE.format(email=email, limit=self.limit))

    def notify(self, email: str, line: str, out: list):
        """
        Tell C{email} by mail what was changed for it (a store program);
        one notice mail per address and control mail, within its budget.
        """
        if self.is_sender(email):
            return
        key = email.lower()
        notice = self.notices.get(key)
        if notice is None:
            allowed = yield from count_unsolicited(email, self.today, self.limit)
            notice = self.notices[key] = Notice(email, allowed)
        if not notice.allowed:
            out.append(texts.NOTICE_LIMIT.format(email=email, limit=self.limit))
            return
        notice.lines.append(line)
        out.append(texts.NOTICE_SENT.format(email=email))


# -- Shared steps of the commands ---------------------------------------------


def target(session: Session, cmd: Command, out: list) -> str | None:
    """The address a command is about: its EMAIL, or the sender's."""
    if cmd.email is None:
        return session.sender
    return email_argument(cmd.email, out)


def email_argument(value: str, out: list) -> str | None:
    try:
        return normalize_email(value)
    except InvalidValue:
        out.append(texts.INVALID_EMAIL.format(value=texts.show(value)))
        return None


def package_name(name: str, out: list) -> str | None:
    name = name.lower()
    try:
        check_package_name(name)
    except InvalidValue:
        out.append(texts.INVALID_PACKAGE.format(value=texts.show(name)))
        return None
    return name


def resolve(name: str, out: list):
    """
    The package a user-given name means, with a warning when it is a
    binary package (its source is used) or not known at all (used as is).
    """
    name = package_name(name, out)
    if name is None:
        return None
    found = yield from resolve_package(name)
    if found.kind == "binary":
        out.append(texts.BINARY_PACKAGE.format(binary=name, source=found.source))
        return found.source
    if found.kind in ("other", "unknown"):
        out.append(texts.UNKNOWN_PACKAGE.format(package=name))
    return name


def slug_argument(slug: str, out: list) -> str | None:
    slug = slug.lower()
    try:
        return check_slug(slug)
    except InvalidValue:
        out.append(texts.INVALID_SLUG.format(value=texts.show(slug)))
        return None


def edited_keywords(cmd, out: list):
    """
    Store program: the keywords a C{+ - =} edit names, in order, once, with
    a warning for each name that is no keyword. Fires with None for a view
    (no edit), with an empty list (and the reason in C{out}) when no name
    is valid.
    """
    if cmd.op is None:
        return None
    known = {k.name for k in (yield from keywords())}
    valid: list = []
    for name in cmd.keywords:
        if name in known:
            if name not in valid:
                valid.append(name)
        else:
            out.append(texts.UNKNOWN_KEYWORD.format(keyword=texts.show(name)))
    if not valid:
        out.append(texts.NO_VALID_KEYWORD)
    return valid
