# -*- test-case-name: tests.control.test_commands -*-
"""
What each control command does, as store programs.

L{execute} runs one parsed L{Command} for a L{Session} (one control mail)
and returns the lines of its output. Commands that change someone's
subscriptions (C{subscribe}, C{unsubscribe}, C{unsubscribeall},
C{join-team}) change nothing here: they are collected per target address in
the session, and the handler mails one C{CONFIRM} key per address. A
confirmed key runs its stored commands through L{run_stored}.

Stored commands are JSON lists such as C{["subscribe", "foo",
"jane@example.org"]}.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from trackermail.control import texts
from trackermail.control.parser import Command
from trackermail.errors import InvalidValue, UnknownTeam
from trackermail.store.confirmations import (
    canonical_command,
    count_confirmation_send,
    take_confirmation,
)
from trackermail.store.keywords import default_keywords, keywords, set_default_keywords
from trackermail.store.packages import resolve_package
from trackermail.store.subscriptions import (
    NotSubscribed,
    is_subscribed,
    set_subscription_keywords,
    subscribe,
    subscribers_of,
    subscription_keywords,
    subscriptions_of,
    unsubscribe,
    unsubscribe_all,
)
from trackermail.store.teams import (
    get_team,
    is_member,
    join_team,
    leave_team,
    team_packages,
    teams_of,
)
from trackermail.validation import check_package_name, check_slug, normalize_email

NEEDS_CONFIRMATION = frozenset({"subscribe", "unsubscribe", "unsubscribeall", "join-team"})

#: 24 random bytes: 192 bits, 32 URL-safe characters.
KEY_BYTES = 24
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


@dataclass
class Pending:
    """The commands of one mail waiting for one address's confirmation."""

    email: str
    allowed: bool
    commands: list = field(default_factory=list)


class Session:
    """
    The state of one control mail: who sent it, when, and the confirmations
    it asks for (address, lowercased -> L{Pending}).
    """

    def __init__(self, ctx, sender: str):
        self.ctx = ctx
        self.sender = sender
        self.control = f"control@{ctx.fqdn}"
        self.now = ctx.now
        self.expiry = ctx.config.control.confirmation_expiry_days * 86400.0
        self.limit = ctx.config.control.max_confirmations_per_day
        self.pending: dict[str, Pending] = {}

    def dedup_key(self, cmd: Command) -> tuple:
        """Two lines asking for the same thing get the same key."""
        email = (cmd.email or self.sender).lower()
        return (cmd.name, cmd.usage, (cmd.package or "").lower(), email,
                (cmd.slug or "").lower(), cmd.key, cmd.op, cmd.keywords)


def obfuscate(email: str) -> str:
    """C{jane@example.org} -> C{jane@e......o..}: each domain label cut to its first letter."""
    local, _, domain = email.rpartition("@")
    hidden = "".join(label[:1] + "." * (len(label) - 1) for label in domain.split("."))
    return f"{local}@{hidden}"


def describe(stored: list) -> str:
    """A stored command and what it does, for the CONFIRM mail."""
    text = " ".join(str(part) for part in stored)
    what = texts.CONFIRM_WHAT.get(stored[0] if stored else "")
    if what is None:
        return text
    target = stored[1] if len(stored) > 2 else ""
    return f"{text}: " + what.format(email=stored[-1], target=target)


# -- Dispatch ---------------------------------------------------------------


def execute(session: Session, cmd: Command):
    """Run one command; fires with its output lines."""
    if cmd.usage:
        return [texts.USAGE.format(usage=texts.USAGES[cmd.name])]
    return (yield from _COMMANDS[cmd.name](session, cmd))


# -- Shared steps ------------------------------------------------------------


def _target(session: Session, cmd: Command, out: list) -> str | None:
    """The address a command is about: its EMAIL, or the sender's."""
    if cmd.email is None:
        return session.sender
    try:
        return normalize_email(cmd.email)
    except InvalidValue:
        out.append(texts.INVALID_EMAIL.format(value=texts.show(cmd.email)))
        return None


def _package_name(name: str, out: list) -> str | None:
    name = name.lower()
    try:
        check_package_name(name)
    except InvalidValue:
        out.append(texts.INVALID_PACKAGE.format(value=texts.show(name)))
        return None
    return name


def _resolve(name: str, out: list):
    """
    The package a user-given name means, with a warning when it is a
    binary package (its source is used) or not known at all (used as is).
    """
    name = _package_name(name, out)
    if name is None:
        return None
    found = yield from resolve_package(name)
    if found.kind == "binary":
        out.append(texts.BINARY_PACKAGE.format(binary=name, source=found.source))
        return found.source
    if found.kind in ("other", "unknown"):
        out.append(texts.UNKNOWN_PACKAGE.format(package=name))
    return name


def _slug(slug: str, out: list) -> str | None:
    slug = slug.lower()
    try:
        return check_slug(slug)
    except InvalidValue:
        out.append(texts.INVALID_SLUG.format(value=texts.show(slug)))
        return None


def _request(session: Session, email: str, stored: list, out: list):
    """
    Ask C{email} to confirm C{stored}. The first request for an address in
    a mail decides, against the daily limit, whether a mail goes out.
    """
    key = email.lower()
    pending = session.pending.get(key)
    if pending is None:
        allowed = yield from count_confirmation_send(
            email, session.ctx.today, session.limit
        )
        pending = session.pending[key] = Pending(email, allowed)
    if not pending.allowed:
        out.append(texts.CONFIRMATION_LIMIT.format(email=email, limit=session.limit))
        return
    if canonical_command(stored) not in {canonical_command(c) for c in pending.commands}:
        pending.commands.append(stored)
    out.append(texts.CONFIRMATION_SENT.format(email=email))


# -- Commands ----------------------------------------------------------------


def _subscribe(session, cmd):
    out: list = []
    email = _target(session, cmd, out)
    if email is None:
        return out
    package = yield from _resolve(cmd.package, out)
    if package is None:
        return out
    if (yield from is_subscribed(email, package)):
        out.append(texts.ALREADY_SUBSCRIBED.format(email=email, package=package))
        return out
    yield from _request(session, email, ["subscribe", package, email], out)
    return out


def _unsubscribe(session, cmd):
    out: list = []
    email = _target(session, cmd, out)
    if email is None:
        return out
    name = _package_name(cmd.package, out)
    if name is None:
        return out
    # A subscription to the exact name wins over what the name resolves to.
    if (yield from is_subscribed(email, name)):
        package = name
    else:
        package = yield from _resolve(name, out)
        if not (yield from is_subscribed(email, package)):
            out.append(texts.NOT_SUBSCRIBED.format(email=email, package=package))
            return out
    yield from _request(session, email, ["unsubscribe", package, email], out)
    return out


def _unsubscribeall(session, cmd):
    out: list = []
    email = _target(session, cmd, out)
    if email is None:
        return out
    if not (yield from subscriptions_of(email)):
        out.append(texts.NOT_SUBSCRIBED_ANY.format(email=email))
        return out
    yield from _request(session, email, ["unsubscribeall", email], out)
    return out


def _which(session, cmd):
    out: list = []
    email = _target(session, cmd, out)
    if email is None:
        return out
    packages = yield from subscriptions_of(email)
    if not packages:
        out.append(texts.NOT_SUBSCRIBED_ANY.format(email=email))
        return out
    out.append(texts.SUBSCRIBED_TO.format(email=email))
    out.extend(texts.item(p) for p in packages)
    return out


def _who(session, cmd):
    out: list = []
    package = yield from _resolve(cmd.package, out)
    if package is None:
        return out
    emails = yield from subscribers_of(package)
    if not emails:
        out.append(texts.NO_SUBSCRIBERS.format(package=package))
        return out
    out.append(texts.SUBSCRIBERS.format(package=package))
    out.extend(texts.item(obfuscate(e)) for e in emails)
    return out


def _keyword(session, cmd):
    out: list = []
    email = _target(session, cmd, out)
    if email is None:
        return out
    names = None
    if cmd.op is not None:
        known = {k.name for k in (yield from keywords())}
        names = []
        for name in cmd.keywords:
            if name in known:
                if name not in names:
                    names.append(name)
            else:
                out.append(texts.UNKNOWN_KEYWORD.format(keyword=texts.show(name)))
    if cmd.package is None:
        if names is None:
            current = yield from default_keywords(email)
            out.append(texts.DEFAULT_KEYWORDS.format(email=email, keywords=texts.listing(current)))
        elif not names:
            out.append(texts.NO_VALID_KEYWORD)
        else:
            new = yield from set_default_keywords(email, cmd.op, names)
            out.append(texts.DEFAULT_KEYWORDS_NOW.format(email=email, keywords=texts.listing(new)))
        return out
    package = yield from _resolve(cmd.package, out)
    if package is None:
        return out
    try:
        current = yield from subscription_keywords(email, package)
    except NotSubscribed:
        out.append(texts.NOT_SUBSCRIBED.format(email=email, package=package))
        return out
    if names is None:
        out.append(texts.PACKAGE_KEYWORDS.format(
            email=email, package=package, keywords=texts.listing(current)))
    elif not names:
        out.append(texts.NO_VALID_KEYWORD)
    else:
        new = yield from set_subscription_keywords(email, package, cmd.op, names)
        out.append(texts.PACKAGE_KEYWORDS_NOW.format(
            email=email, package=package, keywords=texts.listing(new)))
    return out


def _join_team(session, cmd):
    out: list = []
    email = _target(session, cmd, out)
    slug = _slug(cmd.slug, out)
    if email is None or slug is None:
        return out
    team = yield from get_team(slug)
    if team is None:
        out.append(texts.UNKNOWN_TEAM.format(slug=slug))
        return out
    is_owner = team.owner is not None and team.owner.lower() == session.sender.lower()
    if not team.public and not is_owner:
        out.append(texts.TEAM_CLOSED.format(slug=slug))
        return out
    if (yield from is_member(slug, email)):
        out.append(texts.ALREADY_MEMBER.format(email=email, slug=slug))
        return out
    yield from _request(session, email, ["join-team", slug, email], out)
    return out


def _leave_team(session, cmd):
    out: list = []
    email = _target(session, cmd, out)
    slug = _slug(cmd.slug, out)
    if email is None or slug is None:
        return out
    try:
        left = yield from leave_team(slug, email)
    except UnknownTeam:
        out.append(texts.UNKNOWN_TEAM.format(slug=slug))
        return out
    template = texts.LEFT_TEAM if left else texts.NOT_MEMBER
    out.append(template.format(email=email, slug=slug))
    return out


def _list_team_packages(session, cmd):
    out: list = []
    slug = _slug(cmd.slug, out)
    if slug is None:
        return out
    team = yield from get_team(slug)
    if team is None:
        out.append(texts.UNKNOWN_TEAM.format(slug=slug))
        return out
    if not team.public and not (yield from is_member(slug, session.sender)):
        out.append(texts.TEAM_PRIVATE.format(slug=slug))
        return out
    packages = yield from team_packages(slug)
    if not packages:
        out.append(texts.TEAM_NO_PACKAGES.format(slug=slug))
        return out
    out.append(texts.TEAM_PACKAGES.format(slug=slug))
    out.extend(texts.item(p) for p in packages)
    return out


def _which_teams(session, cmd):
    out: list = []
    email = _target(session, cmd, out)
    if email is None:
        return out
    teams = yield from teams_of(email)
    if email.lower() != session.sender.lower():
        # Someone else's private memberships are not ours to tell.
        teams = [t for t in teams if t.public]
    if not teams:
        out.append(texts.MEMBER_OF_NONE.format(email=email))
        return out
    out.append(texts.MEMBER_OF.format(email=email))
    out.extend(texts.item(texts.TEAM_ITEM.format(slug=t.slug, name=texts.show(t.name)))
               for t in teams)
    return out


def _help(session, cmd):
    return texts.help_lines(session.control, session.ctx.config.tracker.contact_address)
    yield  # a program, like every command


def _confirm(session, cmd):
    if not _KEY_RE.match(cmd.key):
        return [texts.INVALID_KEY.format(value=texts.show(cmd.key))]
    result = yield from take_confirmation(cmd.key, session.now, session.expiry)
    if result == "unknown":
        return [texts.KEY_UNKNOWN.format(key=cmd.key)]
    if result == "used":
        return [texts.KEY_USED.format(key=cmd.key)]
    if result == "expired":
        return [texts.KEY_EXPIRED.format(key=cmd.key)]
    email, commands = result
    out = [texts.CONFIRMED.format(email=email)]
    for stored in commands:
        out.extend((yield from run_stored(stored, session.now)))
    return out


_COMMANDS = {
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
    "unsubscribeall": _unsubscribeall,
    "which": _which,
    "who": _who,
    "keyword": _keyword,
    "join-team": _join_team,
    "leave-team": _leave_team,
    "list-team-packages": _list_team_packages,
    "which-teams": _which_teams,
    "help": _help,
    "confirm": _confirm,
}


# -- Confirmed commands --------------------------------------------------------


def run_stored(stored, now: float):
    """Run one confirmed command; fires with its output lines."""
    try:
        match stored:
            case ["subscribe", str(package), str(email)]:
                new = yield from subscribe(email, package, now=now)
                template = texts.NOW_SUBSCRIBED if new else texts.ALREADY_SUBSCRIBED
                return [template.format(email=email, package=package)]
            case ["unsubscribe", str(package), str(email)]:
                gone = yield from unsubscribe(email, package)
                template = texts.NOW_UNSUBSCRIBED if gone else texts.NOT_SUBSCRIBED
                return [template.format(email=email, package=package)]
            case ["unsubscribeall", str(email)]:
                packages = yield from unsubscribe_all(email)
                if not packages:
                    return [texts.NOT_SUBSCRIBED_ANY.format(email=email)]
                return [texts.UNSUBSCRIBED_FROM.format(email=email)] + [
                    texts.item(p) for p in packages
                ]
            case ["join-team", str(slug), str(email)]:
                try:
                    joined = yield from join_team(slug, email)
                except UnknownTeam:
                    return [texts.UNKNOWN_TEAM.format(slug=slug)]
                template = texts.NOW_MEMBER if joined else texts.ALREADY_MEMBER
                return [template.format(email=email, slug=slug)]
    except InvalidValue:
        pass
    return [texts.STORED_COMMAND_BROKEN.format(command=texts.show(json.dumps(stored)))]
