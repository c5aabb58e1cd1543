# -*- test-case-name: tests.bounces.test_policy_legacy -*-
"""
distro-tracker's envelope senders, read for the days after the cutover.

distro-tracker sent every copy from its own VERP address::

    bounces+20240131-jane+2Bdebian=example.org@tracker.example
            ^date    ^recipient: local part "=" domain

made by its C{distro_tracker.core.utils.verp.encode} from
C{bounces+YYYYMMDD@FQDN} (the day the copy was sent) and the recipient:
the sender's local part, C{-}, the recipient's local part, C{=}, its
domain. In both parts of the recipient exactly the characters
C{@ : % ! - [ ] +} are written C{+XX} (uppercase hex); everything else,
C{=} included, is written as it is. Its decoder splits at the last C{@},
then the last C{=}, then the last C{-} (which the escaping of C{-} makes
the separator), and reads the escapes in either case. The addresses carry
no signature: anyone can write one.

So after the switch, bounces of mail the old tracker sent come back to
such addresses, and trackermail counts them only under
C{[bounces] legacy_verp_until} (see L{refusal} and
L{trackermail.bounces.policy}).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from trackermail.bounces.verp import InvalidVerp
from trackermail.errors import InvalidValue
from trackermail.validation import normalize_email

__all__ = ["LegacyVerp", "decode_legacy", "refusal", "MAX_AGE_DAYS"]

# A bounce of a copy the old tracker sent more than this many days ago is
# not counted: mail queues give up after about five days.
MAX_AGE_DAYS = 7

_MAX_INPUT = 1024
_DATE_RE = re.compile(r"[0-9]{8}")
_ESCAPE_RE = re.compile(r"\+(40|3A|25|21|2D|5B|5D|2B)", re.IGNORECASE)


@dataclass(frozen=True)
class LegacyVerp:
    """What a distro-tracker VERP address says: the day, and the recipient."""

    day: datetime.date
    email: str


def _unescape(text: str) -> str:
    return _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), text)


def decode_legacy(local_part_after_plus: str) -> LegacyVerp:
    """
    Read the text after C{bounces+} as distro-tracker wrote it, e.g.
    C{20240131-jane+2Bdebian=example.org}.

    @raise InvalidVerp: when it is not in that form, or the recipient is
        not a valid address.
    """
    text = local_part_after_plus
    if not isinstance(text, str) or len(text) > _MAX_INPUT:
        raise InvalidVerp("not distro-tracker's VERP form")
    left, equals, domain = text.rpartition("=")
    sender, dash, local = left.rpartition("-")
    if not equals or not dash or not _DATE_RE.fullmatch(sender):
        raise InvalidVerp("not distro-tracker's VERP form")
    try:
        day = datetime.datetime.strptime(sender, "%Y%m%d").date()
    except ValueError:
        raise InvalidVerp(f"bad date {sender!r} in distro-tracker's VERP form") from None
    try:
        email = normalize_email(_unescape(local) + "@" + _unescape(domain))
    except InvalidValue:
        raise InvalidVerp("no valid recipient in distro-tracker's VERP form") from None
    return LegacyVerp(day, email)


def refusal(info: LegacyVerp, today: datetime.date, until: str) -> str | None:
    """
    Why a bounce to C{info} must not be counted on C{today} whatever it
    says (the cutover is over, or the copy is too old or dated ahead), or
    None. C{until} is C{[bounces] legacy_verp_until}, empty when off.
    """
    if not until:
        return "[bounces] legacy_verp_until is not set"
    if today > datetime.date.fromisoformat(until):
        return f"the cutover ended on {until} ([bounces] legacy_verp_until)"
    age = (today - info.day).days
    if age > MAX_AGE_DAYS:
        return f"the copy was sent on {info.day}, more than {MAX_AGE_DAYS} days ago"
    if age < -1:
        return f"the copy is dated {info.day}, in the future"
    return None
