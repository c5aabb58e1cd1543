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
    "unsubscribe": "unsubscribe PACKAGE [EMAIL]",
    "unsubscribeall": "unsubscribeall [EMAIL]",
    "which": "which [EMAIL]",
    "who": "who PACKAGE",
    "keyword": "keyword [PACKAGE] [EMAIL] [+|-|= KEYWORD...]",
    "join-team": "join-team TEAM [EMAIL]",
    "leave-team": "leave-team TEAM [EMAIL]",
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

# -- Keywords -------------------------------------------------------------

DEFAULT_KEYWORDS = "Default keywords of {email}: {keywords}"
DEFAULT_KEYWORDS_NOW = "Default keywords of {email} are now: {keywords}"
PACKAGE_KEYWORDS = "Keywords of {email} for {package}: {keywords}"
PACKAGE_KEYWORDS_NOW = "Keywords of {email} for {package} are now: {keywords}"

# -- Teams ----------------------------------------------------------------

ALREADY_MEMBER = "{email} is already a member of team {slug}."
NOT_MEMBER = "{email} is not a member of team {slug}."
NOW_MEMBER = "{email} is now a member of team {slug}."
LEFT_TEAM = "{email} has left team {slug}."
TEAM_CLOSED = "Error: team {slug} is not open to everyone: ask its owner to add you."
TEAM_PRIVATE = "Error: team {slug} is private: only its members may list its packages."
TEAM_PACKAGES = "Packages of team {slug}:"
TEAM_NO_PACKAGES = "Team {slug} has no packages."
MEMBER_OF = "{email} is a member of:"
MEMBER_OF_NONE = "{email} is not a member of any team."
TEAM_ITEM = "{slug} ({name})"

# -- Confirmations --------------------------------------------------------

CONFIRMATION_SENT = "Needs confirmation: a mail with a key was sent to {email}."
CONFIRMATION_LIMIT = (
    "Not done: {email} already got {limit} confirmation mails today; try again tomorrow."
)
KEY_UNKNOWN = "Error: confirmation key {key} is unknown; nothing changed."
KEY_USED = "Error: confirmation key {key} was already used; nothing changed."
KEY_EXPIRED = "Error: confirmation key {key} has expired; nothing changed."
CONFIRMED = "Confirmed for {email}:"
STORED_COMMAND_BROKEN = "Error: a confirmed command could not be run: {command}"

#: What each command that needs confirmation will do, in the CONFIRM mail.
CONFIRM_WHAT = {
    "subscribe": "subscribe {email} to {target}",
    "unsubscribe": "unsubscribe {email} from {target}",
    "unsubscribeall": "unsubscribe {email} from every package",
    "join-team": "make {email} a member of team {target}",
}

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


def reply_footer(fqdn: str, control: str) -> list[str]:
    return ["-- ", f'The package tracker at {fqdn}; send "help" to {control}.']


def help_lines(control: str, contact: str) -> list[str]:
    return [
        f"Commands understood by {control} (EMAIL defaults to your From: address):",
        item("subscribe PACKAGE [EMAIL]: receive mail about PACKAGE (asks for confirmation)"),
        item("unsubscribe PACKAGE [EMAIL]: stop receiving mail about PACKAGE (asks for confirmation)"),
        item("unsubscribeall [EMAIL]: cancel every subscription (asks for confirmation)"),
        item("which [EMAIL]: list the packages EMAIL is subscribed to"),
        item("who PACKAGE: list the subscribers of PACKAGE (addresses hidden)"),
        item("keyword [EMAIL]: show the default keywords of EMAIL"),
        item("keyword PACKAGE [EMAIL]: show the keywords of one subscription"),
        item("keyword [EMAIL] +|-|= KEYWORD...: add, remove or set default keywords"),
        item("keyword PACKAGE [EMAIL] +|-|= KEYWORD...: the same for one subscription"),
        item("join-team TEAM [EMAIL]: become a member of a team (asks for confirmation)"),
        item("leave-team TEAM [EMAIL]: stop being a member of a team"),
        item("list-team-packages TEAM: list the packages of a team"),
        item("which-teams [EMAIL]: list the teams EMAIL is a member of"),
        item("confirm KEY: run the commands waiting for confirmation KEY"),
        item("help: this text"),
        item("quit, thanks or --: stop reading the mail here"),
        "keywords, tag and tags are other names of keyword.",
        f"A human reads {contact}.",
    ]
