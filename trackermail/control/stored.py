# -*- test-case-name: tests.control.test_consent -*-
"""
Commands waiting for a confirmation: how they are stored, described in the
CONFIRM mail, and run once confirmed.

A stored command is a JSON list, e.g. C{["subscribe", "foo",
"jane@example.org"]}; L{Change} reads and writes every form. A team owner's
command on someone else's membership is stored as C{["as-owner", OWNER,
...]}: the owner confirms it (a From: line does not prove who is the owner),
and it is checked again when it runs that OWNER still owns the team.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from trackermail.control import texts
from trackermail.errors import InvalidValue, UnknownEmail, UnknownPackage, UnknownTeam
from trackermail.store.keywords import keywords, set_default_keywords
from trackermail.store.subscriptions import (
    NotSubscribed,
    set_subscription_keywords,
    subscribe,
    unsubscribe,
    unsubscribe_all,
)
from trackermail.store.teams import (
    change_membership_keywords,
    get_team,
    is_member,
    join_team,
    leave_team,
    set_membership_muted,
)


@dataclass(frozen=True)
class Change:
    """
    One change waiting for a confirmation. C{package} is C{""} for a
    keyword or mute change of the whole set or membership. C{owner} is set
    for a team owner's change, which the owner confirms.
    """

    name: str
    email: str
    package: str = ""
    slug: str = ""
    op: str = ""
    names: str = ""
    owner: str = ""

    def stored(self) -> list:
        n, e, p, s = self.name, self.email, self.package, self.slug
        if n in ("subscribe", "unsubscribe"):
            inner = [n, p, e]
        elif n == "unsubscribeall":
            inner = [n, e]
        elif n in ("join-team", "leave-team", "add-team-member", "remove-team-member"):
            inner = [n, s, e]
        elif n == "keyword":
            inner = [n, p, e, self.op, self.names]
        elif n in ("mute-team", "unmute-team"):
            inner = [n, s, e, p]
        else:
            inner = [n, s, e, p, self.op, self.names]
        return ["as-owner", self.owner, *inner] if self.owner else inner

    @classmethod
    def read(cls, stored) -> "Change | None":
        """The change a stored list holds, or None when it holds none."""
        owner = ""
        if isinstance(stored, list) and stored[:1] == ["as-owner"] and len(stored) > 2:
            owner, stored = stored[1], stored[2:]
            if not isinstance(owner, str) or not owner:
                return None
        if not isinstance(stored, list) or not all(isinstance(x, str) for x in stored):
            return None
        match stored:
            case ["subscribe" | "unsubscribe" as n, p, e]:
                change = cls(n, e, package=p)
            case ["unsubscribeall", e]:
                change = cls("unsubscribeall", e)
            case ["join-team" | "leave-team" | "add-team-member" | "remove-team-member" as n,
                  s, e]:
                change = cls(n, e, slug=s)
            case ["keyword", p, e, op, names]:
                change = cls("keyword", e, package=p, op=op, names=names)
            case ["mute-team" | "unmute-team" as n, s, e, p]:
                change = cls(n, e, package=p, slug=s)
            case ["team-keyword", s, e, p, op, names]:
                change = cls("team-keyword", e, package=p, slug=s, op=op, names=names)
            case _:
                return None
        if owner:
            change = replace(change, owner=owner)
        return change

    @property
    def keyword_names(self) -> list[str]:
        return self.names.split()


def describe(stored: list) -> str:
    """A stored command as the CONFIRM mail lists it: the command, then what it does."""
    change = Change.read(stored)
    if change is None:
        return " ".join(str(part) for part in stored)
    fields = asdict(change)
    command = texts.confirm_command(change.name, fields)
    what = texts.confirm_what(change.name, fields | {"names": ", ".join(change.keyword_names)})
    if change.owner:
        what = texts.AS_OWNER.format(slug=change.slug, what=what)
    return f"{command}: {what}"


def run_stored(session, key_email: str, stored):
    """
    Run one confirmed command for the address C{key_email} the key was
    mailed to; fires with its output lines.
    """
    change = Change.read(stored)
    try:
        if change is not None and change.owner:
            return (yield from _run_as_owner(session, key_email, change))
        if change is not None:
            return (yield from _run(session, change))
    except InvalidValue:
        pass
    return [texts.STORED_COMMAND_BROKEN.format(command=texts.show(json.dumps(stored)))]


def _run(session, change: Change):
    e, p, s = change.email, change.package, change.slug
    match change.name:
        case "subscribe":
            new = yield from subscribe(e, p, now=session.now)
            template = texts.NOW_SUBSCRIBED if new else texts.ALREADY_SUBSCRIBED
            return [template.format(email=e, package=p)]
        case "unsubscribe":
            gone = yield from unsubscribe(e, p)
            template = texts.NOW_UNSUBSCRIBED if gone else texts.NOT_SUBSCRIBED
            return [template.format(email=e, package=p)]
        case "unsubscribeall":
            packages = yield from unsubscribe_all(e)
            if not packages:
                return [texts.NOT_SUBSCRIBED_ANY.format(email=e)]
            return [texts.UNSUBSCRIBED_FROM.format(email=e)] + [texts.item(x) for x in packages]
        case "keyword":
            return (yield from _run_keyword(change))
    changed, out = yield from _run_team(change)
    return out


def _valid_names(change: Change):
    known = {k.name for k in (yield from keywords())}
    return [n for n in change.keyword_names if n in known]


def _run_keyword(change: Change):
    e, p = change.email, change.package
    names = yield from _valid_names(change)
    if not p:
        new = yield from set_default_keywords(e, change.op, names)
        return [texts.DEFAULT_KEYWORDS_NOW.format(email=e, keywords=texts.listing(new))]
    try:
        new = yield from set_subscription_keywords(e, p, change.op, names)
    except NotSubscribed:
        return [texts.NOT_SUBSCRIBED.format(email=e, package=p)]
    return [texts.PACKAGE_KEYWORDS_NOW.format(email=e, package=p,
                                              keywords=texts.listing(new))]


def _run_team(change: Change):
    """A membership change; fires with C{(changed, lines)}."""
    e, p, s = change.email, change.package, change.slug
    try:
        match change.name:
            case "join-team":
                joined = yield from join_team(s, e)
                template = texts.NOW_MEMBER if joined else texts.ALREADY_MEMBER
                return joined, [template.format(email=e, slug=s)]
            case "leave-team" | "remove-team-member":
                left = yield from leave_team(s, e)
                template = texts.LEFT_TEAM if left else texts.NOT_MEMBER
                return left, [template.format(email=e, slug=s)]
            case "mute-team" | "unmute-team":
                muted = change.name == "mute-team"
                yield from set_membership_muted(s, e, muted, p or None)
                return True, [texts.mute_state(muted, email=e, slug=s, package=p)]
            case "team-keyword":
                names = yield from _valid_names(change)
                new = yield from change_membership_keywords(s, e, change.op, names, p or None)
                return True, [texts.team_keywords(True, email=e, slug=s, package=p,
                                                  keywords=texts.listing(new))]
    except UnknownTeam:
        return False, [texts.UNKNOWN_TEAM.format(slug=s)]
    except UnknownEmail:
        return False, [texts.NOT_MEMBER.format(email=e, slug=s)]
    except UnknownPackage:
        return False, [texts.NOT_TEAM_PACKAGE.format(package=p, slug=s)]
    command = texts.show(json.dumps(change.stored()))
    return False, [texts.STORED_COMMAND_BROKEN.format(command=command)]


def _run_as_owner(session, key_email: str, change: Change):
    """
    A team owner's change, confirmed by the owner's key: adding asks the
    new member to confirm; any other change is made, and the member is told.
    """
    e, s = change.email, change.slug
    team = yield from get_team(s)
    if team is None:
        return [texts.UNKNOWN_TEAM.format(slug=s)]
    owner = (team.owner or "").lower()
    if owner != change.owner.lower() or owner != key_email.lower():
        return [texts.OWNER_CHANGED.format(owner=change.owner, slug=s)]
    out: list = []
    if change.name == "add-team-member":
        if (yield from is_member(s, e)):
            return [texts.ALREADY_MEMBER.format(email=e, slug=s)]
        yield from session.request(e, Change("join-team", e, slug=s).stored(), out)
        return out
    if change.name == "remove-team-member":
        what = texts.REMOVED_MEMBER.format(email=e, slug=s)
    else:
        what = None
    changed, lines = yield from _run_team(replace(change, owner=""))
    out.extend(lines)
    if changed:
        line = texts.NOTICE_LINE.format(owner=change.owner, slug=s, what=what or lines[0])
        yield from session.notify(e, line, out)
    return out
