# -*- test-case-name: tests.control.test_commands -*-
"""
Every sentence the control bot writes, in one place.

One line per fact, and the same wording for the same situation everywhere:
the tests compare replies against these texts, so a change of wording is a
change here only. Values coming from the user's mail are passed through
L{show} before they are formatted in.
"""

from __future__ import annotations

#: The longest rendering of a user-given value in a reply.
MAX_SHOWN = 120


def show(value: str, limit: int = MAX_SHOWN) -> str:
    """
    Render text from a received mail for a reply: printable characters only
    (control characters, NUL and undecodable bytes become C{?}), cut to
    C{limit} characters.
    """
    text = str(value).encode("utf-8", "replace").decode("utf-8")
    text = "".join(c if c.isprintable() else "?" for c in text)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def echo(line: str) -> str:
    return "> " + show(line, 200)


def listing(items) -> str:
    return ", ".join(sorted(items)) if items else "(none)"


def item(text: str) -> str:
    return "* " + text


def items_or_none(items, heading: str, none: str) -> list[str]:
    """C{heading} and one bullet per item, or the C{none} sentence when there are none."""
    items = list(items)
    if not items:
        return [none]
    return [heading] + [item(i) for i in items]


# -- Reading the mail -----------------------------------------------------

NOT_A_COMMAND = 'Unknown command: ignored (send "help" for the list of commands).'
DUPLICATE = "Same command as above: not run again."
LINE_TOO_LONG = "Line too long to be a command: ignored."
STOP_QUIT = "Stopping here, as asked."
STOP_ERRORS = "Stopped here: {n} lines were not commands."
STOP_TOO_MANY = "Stopped here: one mail may carry at most {n} commands."
NO_PLAIN_TEXT = (
    "This mail has no text/plain part: send your commands as plain text."
)
USAGE = "Error: usage: {usage}"

USAGES = {
    "subscribe": "subscribe PACKAGE [EMAIL]",
    "unsubscribe": "unsubscribe PACKAGE [EMAIL|TOKEN]",
    "unsubscribeall": "unsubscribeall [EMAIL]",
    "which": "which [EMAIL]",
    "who": "who PACKAGE",
    "keyword": "keyword [PACKAGE] [EMAIL] [+|-|= KEYWORD...]",
    "join-team": "join-team TEAM [EMAIL]",
    "leave-team": "leave-team TEAM [EMAIL]",
    "add-team-member": "add-team-member TEAM EMAIL",
    "remove-team-member": "remove-team-member TEAM EMAIL",
    "mute-team": "mute-team TEAM [PACKAGE] [EMAIL]",
    "unmute-team": "unmute-team TEAM [PACKAGE] [EMAIL]",
    "team-keyword": "team-keyword TEAM [PACKAGE] [EMAIL] [+|-|= KEYWORD...]",
    "list-team-packages": "list-team-packages TEAM",
    "which-teams": "which-teams [EMAIL]",
    "help": "help",
    "confirm": "confirm KEY",
}

# -- Values ---------------------------------------------------------------

INVALID_EMAIL = 'Error: "{value}" is not a valid email address.'
INVALID_PACKAGE = 'Error: "{value}" is not a valid package name.'
INVALID_SLUG = 'Error: "{value}" is not a valid team name.'
INVALID_KEY = 'Error: "{value}" is not a valid confirmation key.'
BINARY_PACKAGE = "Warning: {binary} is a binary package; using its source package {source}."
UNKNOWN_PACKAGE = "Warning: {package} is not a known source, binary or pseudo package."
UNKNOWN_KEYWORD = 'Warning: "{keyword}" is not a keyword: ignored.'
NO_VALID_KEYWORD = "Error: no valid keyword given: nothing changed."
UNKNOWN_TEAM = "Error: there is no team {slug}."

# -- Subscriptions --------------------------------------------------------

ALREADY_SUBSCRIBED = "{email} is already subscribed to {package}."
NOT_SUBSCRIBED = "{email} is not subscribed to {package}."
NOT_SUBSCRIBED_ANY = "{email} is not subscribed to any package."
SUBSCRIBED_TO = "{email} is subscribed to:"
SUBSCRIBERS = "Subscribers of {package}:"
NO_SUBSCRIBERS = "{package} has no subscribers."
NOW_SUBSCRIBED = "{email} is now subscribed to {package}."
NOW_UNSUBSCRIBED = "{email} is no longer subscribed to {package}."
UNSUBSCRIBED_FROM = "{email} is no longer subscribed to:"
TOKEN_UNSUBSCRIBED = (
    "Unsubscribe link used: {email} is no longer subscribed to {package}."
)
TOKEN_INVALID = (
    "Error: this unsubscribe link is not valid for a current subscription to {package}"
    " (it may have ended already); nothing changed. Without the link, send"
    ' "unsubscribe {package}" from the subscribed address and confirm.'
)

# -- Keywords -------------------------------------------------------------

DEFAULT_KEYWORDS = "Default keywords of {email}: {keywords}"
DEFAULT_KEYWORDS_NOW = "Default keywords of {email} are now: {keywords}"
PACKAGE_KEYWORDS = "Keywords of {email} for {package}: {keywords}"
PACKAGE_KEYWORDS_NOW = "Keywords of {email} for {package} are now: {keywords}"

# -- Teams ----------------------------------------------------------------

ALREADY_MEMBER = "{email} is already a member of team {slug}."
ALREADY_MEMBER_MUTED = (
    '{email} is already a member of team {slug}, but muted: send "unmute-team {slug}"'
    " to get its mail again."
)
NOT_MEMBER = "{email} is not a member of team {slug}."
NOW_MEMBER = "{email} is now a member of team {slug}."
LEFT_TEAM = "{email} is no longer a member of team {slug}."
REMOVED_MEMBER = "removed {email} from team {slug}."
TEAM_CLOSED = (
    "Error: team {slug} is not open to everyone: its owner can add you with"
    ' "add-team-member {slug} EMAIL".'
)
NOT_OWNER = "Error: only the owner of team {slug} may do this."
OWNER_CHANGED = "Not done: {owner} is no longer the owner of team {slug}."
NOT_TEAM_PACKAGE = "Error: {package} is not a package of team {slug}."
TEAM_PRIVATE = "Error: team {slug} is private: only its members may list its packages."
TEAM_PACKAGES = "Packages of team {slug}:"
TEAM_NO_PACKAGES = "Team {slug} has no packages."
MEMBER_OF = "{email} is a member of:"
MEMBER_OF_NONE = "{email} is not a member of any team."
TEAM_ITEM = "{slug} ({name})"

_MUTE = {
    # (mute, already, with a package)
    (True, False, False): "{email} gets no more mail through team {slug}.",
    (True, False, True): "{email} gets no more mail about {package} through team {slug}.",
    (False, False, False): "{email} gets mail through team {slug} again.",
    (False, False, True): "{email} gets mail about {package} through team {slug} again.",
    (True, True, False): "{email} has already muted team {slug}.",
    (True, True, True): "{email} has already muted {package} in team {slug}.",
    (False, True, False): "{email} has not muted team {slug}.",
    (False, True, True): "{email} has not muted {package} in team {slug}.",
}


def mute_state(mute: bool, *, email: str, slug: str, package: str = "",
               already: bool = False) -> str:
    return _MUTE[mute, already, bool(package)].format(email=email, slug=slug, package=package)


def team_keywords(now: bool, *, email: str, slug: str, package: str, keywords: str) -> str:
    where = f"team {slug} for {package}" if package else f"team {slug}"
    verb = " are now:" if now else ":"
    return f"Keywords of {email} in {where}{verb} {keywords}"

# -- Confirmations --------------------------------------------------------

CONFIRMATION_SENT = "Needs confirmation: a mail with a key was sent to {email}."
CONFIRMATION_LIMIT = (
    "Not done: {email} already got {limit} confirmation mails or notices today;"
    " try again tomorrow."
)
CONFIRMATION_INLINE = (
    "Needs confirmation: {email} already got {limit} confirmation mails or notices"
    " today, so its key is at the end of this reply."
)
KEY_UNKNOWN = "Error: confirmation key {key} is unknown; nothing changed."
KEY_USED = "Error: confirmation key {key} was already used; nothing changed."
KEY_EXPIRED = "Error: confirmation key {key} has expired; nothing changed."
CONFIRMED = "Confirmed for {email}:"
STORED_COMMAND_BROKEN = "Error: a confirmed command could not be run: {command}"
AS_OWNER = "as owner of team {slug}, {what}"

#: How each change waiting for confirmation reads in the CONFIRM mail:
#: the command, then what it does.
_CONFIRM_COMMAND = {
    "subscribe": "subscribe {package} {email}",
    "unsubscribe": "unsubscribe {package} {email}",
    "unsubscribeall": "unsubscribeall {email}",
    "join-team": "join-team {slug} {email}",
    "leave-team": "leave-team {slug} {email}",
    "add-team-member": "add-team-member {slug} {email}",
    "remove-team-member": "remove-team-member {slug} {email}",
    "keyword": "keyword {package} {email} {op} {names}",
    "mute-team": "mute-team {slug} {package} {email}",
    "unmute-team": "unmute-team {slug} {package} {email}",
    "team-keyword": "team-keyword {slug} {package} {email} {op} {names}",
}
_CONFIRM_WHAT = {
    "subscribe": "subscribe {email} to {package}",
    "unsubscribe": "unsubscribe {email} from {package}",
    "unsubscribeall": "unsubscribe {email} from every package",
    "join-team": "make {email} a member of team {slug}",
    "leave-team": "end the membership of {email} in team {slug}",
    "add-team-member": "ask {email} to become a member of the team",
    "remove-team-member": "remove {email} from the team (it is told by mail)",
    "mute-team": "stop the mail to {email} through team {slug}",
    "unmute-team": "send mail to {email} through team {slug} again",
}
_KEYWORD_WHAT = {
    "+": "add {names} to the {kind} of {whose}",
    "-": "remove {names} from the {kind} of {whose}",
    "=": "make {names} the {kind} of {whose}",
}


def confirm_command(name: str, fields: dict) -> str:
    return " ".join(_CONFIRM_COMMAND[name].format(**fields).split())


def confirm_what(name: str, fields: dict) -> str:
    package = fields.get("package")
    if name in ("keyword", "team-keyword"):
        whose = fields["email"]
        if name == "team-keyword":
            whose += f" in team {fields['slug']}"
        if package:
            whose += f" for {package}"
        kind = "keywords" if package or name == "team-keyword" else "default keywords"
        what = _KEYWORD_WHAT[fields["op"]].format(names=fields["names"], kind=kind,
                                                  whose=whose)
    else:
        what = _CONFIRM_WHAT[name].format(**fields)
        if package and name in ("mute-team", "unmute-team"):
            what = what.replace(" through team", f" about {package} through team")
    if fields.get("owner") and name in ("mute-team", "unmute-team", "team-keyword"):
        what += " (it is told by mail)"
    return what


CONFIRMATION_SUBJECT = "CONFIRM {key}"


def confirmation_body(*, requester: str, email: str, fqdn: str, control: str,
                      key: str, lines: list[str], days: int) -> str:
    """
    The CONFIRM mail. The commands are listed as C{* ...} lines so that a
    reply quoting them without C{>} does not run them again.
    """
    plural = "day" if days == 1 else "days"
    return "\n".join(
        [
            f"{requester} asked the package tracker at {fqdn} to:",
            "",
            *[item(line) for line in lines],
            "",
            "To confirm, reply to this mail keeping its subject, or send a mail",
            f"to {control} containing this line:",
            "",
            f"confirm {key}",
            "",
            f"The key can be used once and expires in {days} {plural}.",
            "If you did not ask for this, ignore this mail: nothing changes.",
            "",
            "-- ",
            f"The package tracker at {fqdn}",
        ]
    ) + "\n"


def inline_confirmation(*, email: str, control: str, key: str, lines: list[str],
                        days: int) -> list[str]:
    """The key of a confirmation that could not be mailed, at the end of the reply."""
    plural = "day" if days == 1 else "days"
    return [
        f"Waiting for the confirmation of {email}:",
        *[item(line) for line in lines],
        f"To confirm, send a mail to {control} containing this line:",
        "",
        f"confirm {key}",
        "",
        f"The key can be used once and expires in {days} {plural}.",
    ]


# -- Notices to team members ------------------------------------------------

NOTICE_SENT = "{email} is told by mail."
NOTICE_LIMIT = (
    "{email} is not told by mail: it already got {limit} confirmation mails or notices today."
)
NOTICE_LINE = "{owner}, owner of team {slug}: {what}"
NOTICE_SUBJECT = "Changes to your team memberships"


def notice_body(*, email: str, fqdn: str, control: str, lines: list[str]) -> str:
    return "\n".join(
        [
            f"These changes were made for {email} at the package tracker at {fqdn}:",
            "",
            *[item(line) for line in lines],
            "",
            "Nothing is needed from you. Ask the team's owner about them, or send",
            f'"help" to {control} for what you can change yourself.',
            "",
            "-- ",
            f"The package tracker at {fqdn}",
        ]
    ) + "\n"


# -- Replies a day ------------------------------------------------------------

REPLY_CAP_REACHED = (
    "This is reply {cap} to {email} today, the last one: until tomorrow, mails from"
    " this address get no answer, and only their confirm keys and unsubscribe"
    " links are acted on."
)
NOT_RUN_REPLY_CAP = (
    "Not run: {email} already got {cap} replies today; until tomorrow only confirm"
    " keys and unsubscribe links are acted on."
)


def reply_footer(fqdn: str, control: str) -> list[str]:
    return ["-- ", f'The package tracker at {fqdn}; send "help" to {control}.']


def help_lines(control: str, contact: str) -> list[str]:
    return [
        f"Commands understood by {control} (EMAIL defaults to your From: address):",
        item("subscribe PACKAGE [EMAIL]: receive mail about PACKAGE"),
        item("unsubscribe PACKAGE [EMAIL]: stop receiving mail about PACKAGE"),
        item("unsubscribe PACKAGE TOKEN: the same at once, with the token of the"
             " List-Unsubscribe header of a mail about PACKAGE"),
        item("unsubscribeall [EMAIL]: cancel every subscription"),
        item("which [EMAIL]: list the packages EMAIL is subscribed to"),
        item("who PACKAGE: list the subscribers of PACKAGE (addresses hidden)"),
        item("keyword [EMAIL]: show the default keywords of EMAIL"),
        item("keyword PACKAGE [EMAIL]: show the keywords of one subscription"),
        item("keyword [EMAIL] +|-|= KEYWORD...: add, remove or set default keywords"),
        item("keyword PACKAGE [EMAIL] +|-|= KEYWORD...: the same for one subscription"),
        item("join-team TEAM [EMAIL]: become a member of a team open to everyone"),
        item("leave-team TEAM [EMAIL]: stop being a member of a team"),
        item("mute-team TEAM [PACKAGE] [EMAIL]: stop the mail of a team (or of one"
             " of its packages) without leaving it"),
        item("unmute-team TEAM [PACKAGE] [EMAIL]: get that mail again"),
        item("team-keyword TEAM [PACKAGE] [EMAIL]: show the keywords of a membership"
             " (or of one of its packages)"),
        item("team-keyword TEAM [PACKAGE] [EMAIL] +|-|= KEYWORD...: change them"),
        item("add-team-member TEAM EMAIL: team owners: ask EMAIL to join the team"),
        item("remove-team-member TEAM EMAIL: team owners: remove EMAIL from the team"
             " (EMAIL is told by mail)"),
        item("list-team-packages TEAM: list the packages of a team"),
        item("which-teams [EMAIL]: list the teams EMAIL is a member of"),
        item("confirm KEY: run the commands waiting for confirmation KEY"),
        item("help: this text"),
        item("quit, thanks or --: stop reading the mail here"),
        "keywords, tag and tags are other names of keyword; team-keywords, team-tag",
        "and team-tags of team-keyword.",
        "",
        "Every change to the subscriptions, keywords or team memberships of an",
        "address waits until that address confirms it with the key mailed to it,",
        "even when the address is your own: anyone can write any From: line.",
        "This includes keyword changes, which distro-tracker makes at once.",
        "Team owners confirm what they change for their members (the member",
        "is told by mail); a new member confirms too. The one exception is the",
        "unsubscribe link (TOKEN) of a forwarded mail, which proves that its",
        "address got that mail and acts at once.",
        "",
        f"A human reads {contact}.",
    ]
