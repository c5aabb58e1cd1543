# -*- test-case-name: tests.control.test_teams -*-
"""
The team commands of the control bot.

A member's own membership follows the consent rule: C{join-team},
C{leave-team}, C{mute-team}, C{unmute-team} and C{team-keyword} edits ask
the member to confirm. A team's owner may add and remove members and mute
or set the keywords of any member's membership: those ask the owner to
confirm (a From: line proves nothing), and then adding asks the new member
to confirm too, while the other changes are made and the member gets a
notice. Private teams are joined only through their owner's
C{add-team-member}.
"""

from __future__ import annotations

from dataclasses import replace

from trackermail.control import texts
from trackermail.control.session import (
    edited_keywords,
    email_argument,
    resolve,
    slug_argument,
    target,
)
from trackermail.control.stored import Change
from trackermail.store.teams import (
    get_team,
    is_member,
    membership,
    membership_keywords,
    team_packages,
    teams_of,
)


def _team(session, cmd, out):
    """C{(team, target address)} of a team command, or C{(None, None)} after an error line."""
    email = target(session, cmd, out)
    slug = slug_argument(cmd.slug, out)
    if email is None or slug is None:
        return None, None
    team = yield from get_team(slug)
    if team is None:
        out.append(texts.UNKNOWN_TEAM.format(slug=slug))
        return None, None
    return team, email


def _is_owner(session, team) -> bool:
    return team.owner is not None and session.is_sender(team.owner)


def _team_package(team, cmd, out):
    """The package of a C{TEAM PKG} command (C{""} when none), or None after an error line."""
    if cmd.package is None:
        return ""
    package = yield from resolve(cmd.package, out)
    if package is None:
        return None
    if package not in (yield from team_packages(team.slug)):
        out.append(texts.NOT_TEAM_PACKAGE.format(package=package, slug=team.slug))
        return None
    return package


def _ask(session, team, change: Change, out):
    """
    Ask for the confirmation of a membership change: the member's own, or,
    when the owner changes someone else's membership, the owner's.
    """
    if _is_owner(session, team) and not session.is_sender(change.email):
        change = replace(change, owner=team.owner)
        yield from session.request(team.owner, change.stored(), out)
    else:
        yield from session.request(change.email, change.stored(), out)


def _join_team(session, cmd):
    out: list = []
    team, email = yield from _team(session, cmd, out)
    if team is None:
        return out
    if not team.public:
        out.append(texts.TEAM_CLOSED.format(slug=team.slug))
        return out
    state = yield from membership(team.slug, email)
    if state is not None:
        template = texts.ALREADY_MEMBER_MUTED if state.muted else texts.ALREADY_MEMBER
        out.append(template.format(email=email, slug=team.slug))
        return out
    yield from session.request(email, Change("join-team", email, slug=team.slug).stored(), out)
    return out


def _leave_team(session, cmd):
    out: list = []
    team, email = yield from _team(session, cmd, out)
    if team is None:
        return out
    if not (yield from is_member(team.slug, email)):
        out.append(texts.NOT_MEMBER.format(email=email, slug=team.slug))
        return out
    yield from session.request(email, Change("leave-team", email, slug=team.slug).stored(), out)
    return out


def _owner_command(session, cmd):
    """C{add-team-member} and C{remove-team-member}: the owner confirms."""
    out: list = []
    slug = slug_argument(cmd.slug, out)
    email = email_argument(cmd.email, out)
    if slug is None or email is None:
        return out
    team = yield from get_team(slug)
    if team is None:
        out.append(texts.UNKNOWN_TEAM.format(slug=slug))
        return out
    if not _is_owner(session, team):
        out.append(texts.NOT_OWNER.format(slug=slug))
        return out
    member = yield from is_member(slug, email)
    if cmd.name == "add-team-member" and member:
        out.append(texts.ALREADY_MEMBER.format(email=email, slug=slug))
        return out
    if cmd.name == "remove-team-member" and not member:
        out.append(texts.NOT_MEMBER.format(email=email, slug=slug))
        return out
    change = Change(cmd.name, email, slug=slug, owner=team.owner)
    yield from session.request(team.owner, change.stored(), out)
    return out


def _mute(session, cmd):
    """C{mute-team} and C{unmute-team} C{TEAM [PKG] [EMAIL]}."""
    out: list = []
    team, email = yield from _team(session, cmd, out)
    if team is None:
        return out
    package = yield from _team_package(team, cmd, out)
    if package is None:
        return out
    state = yield from membership(team.slug, email)
    if state is None:
        out.append(texts.NOT_MEMBER.format(email=email, slug=team.slug))
        return out
    mute = cmd.name == "mute-team"
    muted = package in state.muted_packages if package else state.muted
    if muted == mute:
        out.append(texts.mute_state(mute, already=True, email=email, slug=team.slug,
                                    package=package))
        return out
    yield from _ask(session, team, Change(cmd.name, email, package, team.slug), out)
    return out


def _team_keyword(session, cmd):
    """C{team-keyword TEAM [PKG] [EMAIL] [+|-|= KEYWORD...]}."""
    out: list = []
    team, email = yield from _team(session, cmd, out)
    if team is None:
        return out
    names = yield from edited_keywords(cmd, out)
    if names == []:
        return out
    package = yield from _team_package(team, cmd, out)
    if package is None:
        return out
    if not (yield from is_member(team.slug, email)):
        out.append(texts.NOT_MEMBER.format(email=email, slug=team.slug))
        return out
    if names is None:
        current = yield from membership_keywords(team.slug, email, package or None)
        out.append(texts.team_keywords(False, email=email, slug=team.slug, package=package,
                                       keywords=texts.listing(current)))
        return out
    change = Change("team-keyword", email, package, team.slug, op=cmd.op,
                    names=" ".join(names))
    yield from _ask(session, team, change, out)
    return out


def _list_team_packages(session, cmd):
    out: list = []
    slug = slug_argument(cmd.slug, out)
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
    out.extend(texts.items_or_none(packages, texts.TEAM_PACKAGES.format(slug=slug),
                                   texts.TEAM_NO_PACKAGES.format(slug=slug)))
    return out


def _which_teams(session, cmd):
    out: list = []
    email = target(session, cmd, out)
    if email is None:
        return out
    teams = yield from teams_of(email)
    if not session.is_sender(email):
        # Someone else's private memberships are not ours to tell.
        teams = [t for t in teams if t.public]
    out.extend(texts.items_or_none(
        (texts.TEAM_ITEM.format(slug=t.slug, name=texts.show(t.name)) for t in teams),
        texts.MEMBER_OF.format(email=email), texts.MEMBER_OF_NONE.format(email=email)))
    return out


TEAM_COMMANDS = {
    "join-team": _join_team,
    "leave-team": _leave_team,
    "add-team-member": _owner_command,
    "remove-team-member": _owner_command,
    "mute-team": _mute,
    "unmute-team": _mute,
    "team-keyword": _team_keyword,
    "list-team-packages": _list_team_packages,
    "which-teams": _which_teams,
}
