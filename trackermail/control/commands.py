# -*- test-case-name: tests.control.test_commands -*-
"""
What each control command does, as store programs.

L{execute} runs one parsed L{Command} for a L{Session} (one control mail)
and returns the lines of its output. A command that would change an
address's subscriptions, keywords or team memberships changes nothing here:
it asks that address for a confirmation (L{Session.request}), and the
confirmed key runs it (L{trackermail.control.stored}). Two things act at
once, because they carry proof: C{confirm KEY}, and C{unsubscribe PKG TOKEN}
with the token of a forwarded copy's C{List-Unsubscribe}.

The team commands live in L{trackermail.control.team_commands}.
"""

from __future__ import annotations

import re

from trackermail.control import texts
from trackermail.control.parser import Command
from trackermail.control.session import (
    Session,
    edited_keywords,
    package_name,
    resolve,
    target,
)
from trackermail.control.stored import Change, run_stored
from trackermail.control.team_commands import TEAM_COMMANDS
from trackermail.store.confirmations import take_confirmation
from trackermail.store.keywords import default_keywords
from trackermail.store.subscriptions import (
    NotSubscribed,
    is_subscribed,
    subscribers_of,
    subscription_keywords,
    subscriptions_of,
    unsubscribe_by_token,
)

_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def obfuscate(email: str) -> str:
    """C{jane@example.org} -> C{jane@e......o..}: each domain label cut to its first letter."""
    local, _, domain = email.rpartition("@")
    hidden = "".join(label[:1] + "." * (len(label) - 1) for label in domain.split("."))
    return f"{local}@{hidden}"


def carries_proof(cmd: Command) -> bool:
    """Whether a command can prove itself: a confirm key or an unsubscribe token."""
    return cmd.name == "confirm" or (cmd.name == "unsubscribe" and cmd.token is not None)


def execute(session: Session, cmd: Command):
    """Run one command; fires with its output lines."""
    if cmd.usage:
        return [texts.USAGE.format(usage=texts.USAGES[cmd.name])]
    if session.proof_only and not carries_proof(cmd):
        return [texts.NOT_RUN_REPLY_CAP.format(email=session.sender, cap=session.reply_cap)]
    return (yield from _COMMANDS[cmd.name](session, cmd))


# -- Subscriptions -------------------------------------------------------------


def _subscribe(session, cmd):
    out: list = []
    email = target(session, cmd, out)
    if email is None:
        return out
    package = yield from resolve(cmd.package, out)
    if package is None:
        return out
    if (yield from is_subscribed(email, package)):
        out.append(texts.ALREADY_SUBSCRIBED.format(email=email, package=package))
        return out
    yield from session.request(email, Change("subscribe", email, package).stored(), out)
    return out


def _unsubscribe(session, cmd):
    if cmd.token is not None:
        return (yield from _unsubscribe_by_token(session, cmd))
    out: list = []
    email = target(session, cmd, out)
    if email is None:
        return out
    name = package_name(cmd.package, out)
    if name is None:
        return out
    # A subscription to the exact name wins over what the name resolves to.
    if (yield from is_subscribed(email, name)):
        package = name
    else:
        package = yield from resolve(name, out)
        if not (yield from is_subscribed(email, package)):
            out.append(texts.NOT_SUBSCRIBED.format(email=email, package=package))
            return out
    yield from session.request(email, Change("unsubscribe", email, package).stored(), out)
    return out


def _unsubscribe_by_token(session, cmd):
    """C{unsubscribe PKG TOKEN}: the token proves receipt, so it acts at once."""
    out: list = []
    name = package_name(cmd.package, out)
    if name is None:
        return out
    removed = yield from unsubscribe_by_token(session.secret, cmd.token, name)
    if removed is None:
        return [texts.TOKEN_INVALID.format(package=name)]
    session.proven = True
    email, package = removed
    return [texts.TOKEN_UNSUBSCRIBED.format(email=email, package=package)]


def _unsubscribeall(session, cmd):
    out: list = []
    email = target(session, cmd, out)
    if email is None:
        return out
    if not (yield from subscriptions_of(email)):
        out.append(texts.NOT_SUBSCRIBED_ANY.format(email=email))
        return out
    yield from session.request(email, Change("unsubscribeall", email).stored(), out)
    return out


def _which(session, cmd):
    out: list = []
    email = target(session, cmd, out)
    if email is None:
        return out
    packages = yield from subscriptions_of(email)
    out.extend(texts.items_or_none(packages, texts.SUBSCRIBED_TO.format(email=email),
                                   texts.NOT_SUBSCRIBED_ANY.format(email=email)))
    return out


def _who(session, cmd):
    out: list = []
    package = yield from resolve(cmd.package, out)
    if package is None:
        return out
    emails = yield from subscribers_of(package)
    out.extend(texts.items_or_none((obfuscate(e) for e in emails),
                                   texts.SUBSCRIBERS.format(package=package),
                                   texts.NO_SUBSCRIBERS.format(package=package)))
    return out


def _keyword(session, cmd):
    """
    C{keyword [PKG] [EMAIL]} shows a keyword set; with C{+ - =} it asks
    EMAIL to confirm the change (stricter than distro-tracker, which makes
    it at once: a stranger could silence someone's bug mail).
    """
    out: list = []
    email = target(session, cmd, out)
    if email is None:
        return out
    names = yield from edited_keywords(cmd, out)
    if names == []:
        return out
    package = ""
    if cmd.package is not None:
        package = yield from resolve(cmd.package, out)
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
            return out
    elif names is None:
        current = yield from default_keywords(email)
        out.append(texts.DEFAULT_KEYWORDS.format(email=email, keywords=texts.listing(current)))
        return out
    change = Change("keyword", email, package, op=cmd.op, names=" ".join(names))
    yield from session.request(email, change.stored(), out)
    return out


# -- The rest ------------------------------------------------------------------


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
    session.proven = True
    email, commands = result
    out = [texts.CONFIRMED.format(email=email)]
    for stored in commands:
        out.extend((yield from run_stored(session, email, stored)))
    return out


_COMMANDS = {
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
    "unsubscribeall": _unsubscribeall,
    "which": _which,
    "who": _who,
    "keyword": _keyword,
    "help": _help,
    "confirm": _confirm,
    **TEAM_COMMANDS,
}
