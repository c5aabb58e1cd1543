# -*- test-case-name: tests.control.test_parser -*-
"""
Reading a control mail: its command lines and what each one asks for.

Nothing here touches the store. L{trackermail.message.plain_text} finds
the text to read,
L{subject_line} turns the Subject into the first line, L{parse} classifies
one line. Every function accepts anything a hostile or broken mail can
contain and never raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trackermail.message import header

#: Limits that keep the work for one mail bounded, whatever its size.
MAX_LINE_LENGTH = 1000
MAX_ERRORS = 5
MAX_COMMANDS = 100

_REPLY_PREFIX = re.compile(r"^\s*(?:(?:re|aw)\s*:\s*)+", re.I)
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")
_OPS = "+-="
_KEYWORD_SPLIT = re.compile(r"[,\s]+")

#: Accepted command names and the canonical command each one is.
NAMES = {
    "subscribe": "subscribe",
    "unsubscribe": "unsubscribe",
    "unsubscribeall": "unsubscribeall",
    "which": "which",
    "who": "who",
    "keyword": "keyword",
    "keywords": "keyword",
    "tag": "keyword",
    "tags": "keyword",
    "join-team": "join-team",
    "leave-team": "leave-team",
    "add-team-member": "add-team-member",
    "remove-team-member": "remove-team-member",
    "mute-team": "mute-team",
    "unmute-team": "unmute-team",
    "team-keyword": "team-keyword",
    "team-keywords": "team-keyword",
    "team-tag": "team-keyword",
    "team-tags": "team-keyword",
    "list-team-packages": "list-team-packages",
    "which-teams": "which-teams",
    "help": "help",
    "confirm": "confirm",
}

_QUIT_WORDS = frozenset({"quit", "thanks", "thank"})


# -- What a line is --------------------------------------------------------


class Skip:
    """A blank, comment (C{#}) or quoted (C{>}) line: not echoed, not counted."""


class Stop:
    """C{quit}, C{thanks} or C{--}: stop reading."""


@dataclass(frozen=True)
class NotCommand:
    """A line that is not a command; C{too_long} when it was not even looked at."""

    too_long: bool = False


@dataclass(frozen=True)
class Command:
    """
    One parsed command. C{usage} is True when the name is known but the
    arguments do not fit; the other fields are then meaningless. Values are
    as written: validating them is the command's job.

    C{email} is None when omitted (the sender is meant). For C{keyword}
    and C{team-keyword}, C{op} is None for a view and one of C{+ - =} for
    an edit. C{token} is the unsubscribe token of C{unsubscribe PKG TOKEN}.
    """

    name: str
    package: str | None = None
    email: str | None = None
    slug: str | None = None
    key: str | None = None
    op: str | None = None
    keywords: tuple[str, ...] = ()
    token: str | None = None
    usage: bool = False


SKIP = Skip()
STOP = Stop()


# -- The mail --------------------------------------------------------------


def subject_line(msg) -> str:
    """
    The Subject as a command line: C{Re:} prefixes removed, control
    characters (an encoded newline, say) turned into spaces.
    """
    subject = header(msg, "Subject", "")
    subject = " ".join(_CONTROL_CHARS.sub(" ", subject).split())
    return _REPLY_PREFIX.sub("", subject)


def lines_of(text: str):
    """The lines of a body, stripped; lazily, so a huge body costs little."""
    start = 0
    length = len(text)
    while start < length:
        match = _LINE_END.search(text, start)
        if match is None:
            yield text[start:].strip()
            return
        yield text[start: match.start()].strip()
        start = match.end()


_LINE_END = re.compile(r"\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


# -- One line ---------------------------------------------------------------


def parse(line: str):
    """
    Classify one stripped line: L{SKIP}, L{STOP}, a L{NotCommand} or a
    L{Command}.
    """
    if not line or line.startswith("#") or line.startswith(">"):
        return SKIP
    if line == "--":
        return STOP
    if len(line) > MAX_LINE_LENGTH:
        return NotCommand(too_long=True)
    tokens = line.split()
    if not tokens:
        return SKIP
    first = tokens[0].lower()
    if first.rstrip(".,!") in _QUIT_WORDS:
        return STOP
    name = NAMES.get(first)
    if name is None:
        return NotCommand()
    args = tokens[1:]
    if name == "keyword":
        return _parse_keyword(args)
    if name == "team-keyword":
        return _parse_team_keyword(args)
    return _SIMPLE[name](args) or Command(name, usage=True)


def _is_email(token: str) -> bool:
    return "@" in token


def _package_email(name):
    def parse(args):
        if len(args) == 1:
            return Command(name, package=args[0])
        if len(args) == 2:
            return Command(name, package=args[0], email=args[1])
        return None

    return parse


def _unsubscribe(args):
    """C{PKG}, C{PKG EMAIL}, or C{PKG TOKEN} (the List-Unsubscribe mailto)."""
    if len(args) == 1:
        return Command("unsubscribe", package=args[0])
    if len(args) == 2:
        if _is_email(args[1]):
            return Command("unsubscribe", package=args[0], email=args[1])
        return Command("unsubscribe", package=args[0], token=args[1])
    return None


def _slug_package_email(name):
    """C{TEAM [PKG] [EMAIL]}: the token with an C{@} is the EMAIL."""
    def parse(args):
        if not args or len(args) > 3:
            return None
        slug, rest = args[0], args[1:]
        emails = [t for t in rest if _is_email(t)]
        packages = [t for t in rest if not _is_email(t)]
        if len(emails) > 1 or len(packages) > 1 or (emails and rest[-1] != emails[0]):
            return None
        return Command(name, slug=slug, package=packages[0] if packages else None,
                       email=emails[0] if emails else None)

    return parse


def _slug_and_email(name):
    def parse(args):
        if len(args) == 2:
            return Command(name, slug=args[0], email=args[1])
        return None

    return parse


def _slug_email(name):
    def parse(args):
        if len(args) == 1:
            return Command(name, slug=args[0])
        if len(args) == 2:
            return Command(name, slug=args[0], email=args[1])
        return None

    return parse


def _email_only(name):
    def parse(args):
        if not args:
            return Command(name)
        if len(args) == 1:
            return Command(name, email=args[0])
        return None

    return parse


def _one(name, field):
    def parse(args):
        if len(args) == 1:
            return Command(name, **{field: args[0]})
        return None

    return parse


def _nothing(name):
    def parse(args):
        return Command(name) if not args else None

    return parse


_SIMPLE = {
    "subscribe": _package_email("subscribe"),
    "unsubscribe": _unsubscribe,
    "unsubscribeall": _email_only("unsubscribeall"),
    "which": _email_only("which"),
    "who": _one("who", "package"),
    "join-team": _slug_email("join-team"),
    "leave-team": _slug_email("leave-team"),
    "add-team-member": _slug_and_email("add-team-member"),
    "remove-team-member": _slug_and_email("remove-team-member"),
    "mute-team": _slug_package_email("mute-team"),
    "unmute-team": _slug_package_email("unmute-team"),
    "list-team-packages": _one("list-team-packages", "slug"),
    "which-teams": _email_only("which-teams"),
    "help": _nothing("help"),
    "confirm": _one("confirm", "key"),
}


def _parse_keyword(args, name: str = "keyword", slug: str | None = None) -> Command:
    """
    The four forms: C{[PKG] [EMAIL]} to view, then optionally an operator
    (a token of its own, or glued to the first keyword) and keywords split
    on spaces or commas. A token with an C{@} is the EMAIL.
    """
    op_at = next((i for i, t in enumerate(args) if t[0] in _OPS), None)
    head = args if op_at is None else args[:op_at]
    package = email = None
    if len(head) == 1:
        if _is_email(head[0]):
            email = head[0]
        else:
            package = head[0]
    elif len(head) == 2 and not _is_email(head[0]):
        package, email = head
    elif len(head) > 1:
        return Command(name, usage=True)
    if op_at is None:
        return Command(name, package=package, email=email, slug=slug)
    op = args[op_at][0]
    rest = " ".join([args[op_at][1:], *args[op_at + 1:]])
    names = tuple(n.lower() for n in _KEYWORD_SPLIT.split(rest) if n)
    if not names:
        return Command(name, usage=True)
    return Command(name, package=package, email=email, slug=slug, op=op, keywords=names)


def _parse_team_keyword(args) -> Command:
    """C{TEAM} first, then the forms of C{keyword}."""
    if not args or args[0][0] in _OPS or _is_email(args[0]):
        return Command("team-keyword", usage=True)
    return _parse_keyword(args[1:], "team-keyword", args[0])
