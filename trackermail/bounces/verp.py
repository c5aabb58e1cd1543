# -*- test-case-name: tests.bounces.test_verp -*-
"""
Signed VERP envelope senders.

Every forwarded copy leaves with its own envelope sender, so that a bounce
says by its address alone who bounced, when, and which copy it was::

    bounces+20240131k3x7q-lgqkgurz-jane+2Bdebian=example.org@tracker.example
            ^date   ^copy ^tag     ^recipient: local part "=" domain

The copy token (5 base32 characters, 25 random bits) is drawn once per
fan-out: together with the recipient it names one copy, so that two bounces
for the same copy (a replayed bounce, or a DSN after the smarthost already
refused the copy) are counted once (L{VerpInfo.copy}). Two fan-outs to one
address on one day share a token once in 2^25 draws; the worst that does is
count one bounce too few.

The recipient is written with distro-tracker's encoding: C{+XX} (uppercase hex)
escapes, and C{=} between the local part and the domain. Unlike
distro-tracker, every character outside C{[A-Za-z0-9._]} is escaped (C{=}
included, so exactly one bare C{=} remains), non-ASCII characters are escaped
byte by byte in UTF-8, and a dot that would break the dot-atom syntax (C{..},
or a dot at the very end) is escaped too: the whole local part is always a
plain RFC 5321 dot-atom that any MTA accepts without quoting.

The tag is a keyed MAC (L{trackermail.signing.keyed_digest} with the
tracker's C{secret_key}) over the date, the copy token and the
ASCII-lowercased recipient, as 8 base32 characters (40 bits: about 10^12
forged bounces to guess one, per address and copy). Anyone can mail
C{bounces+...@}, so a bounce whose tag does not verify must be ignored:
otherwise anyone could get anyone else unsubscribed. Base32 has no C{-},
C{=} or C{+}, and the token, the tag and the escapes are read
case-insensitively, because MTAs may change the case of local parts.

RFC 5321 lets receivers refuse local parts longer than 64 octets, and the
fixed part above takes 31, so a recipient whose encoding is longer than 33
octets gets the compact form, which carries the stored id of the address::

    bounces+20240131k3x7q-epmmxqaq-4711@tracker.example

The compact form has no C{=} while the readable form always has exactly one,
and its tag is made for a different purpose, so neither form can be read as
the other.

Addresses of the first version, without a copy token
(C{bounces+20240131-p6wc4obs-jane+2Bdebian=example.org@...} and
C{bounces+20240131-6ebd3vcv-4711@...}), still verify: copies signed so
before an upgrade bounce for up to L{DEFAULT_MAX_AGE_DAYS} days after the
date they carry (older bounces are dropped by L{is_expired} anyway), so
their decoding must stay at least that long after the last node stopped
signing them. They name no copy (C{copy} is None). Their MACs are made for
their own purposes, so a version-1 tag never verifies as a version-2 one.
"""

from __future__ import annotations

import base64
import datetime
import hmac
import os
import re
from dataclasses import dataclass

from trackermail.errors import TrackerError
from trackermail.signing import keyed_digest

__all__ = [
    "VerpInfo",
    "InvalidVerp",
    "encode",
    "signer",
    "new_token",
    "decode",
    "decode_local",
    "is_expired",
    "LOCAL_PREFIX",
    "MAX_LOCAL_PART",
    "TAG_LENGTH",
    "TOKEN_LENGTH",
    "DEFAULT_MAX_AGE_DAYS",
]

LOCAL_PREFIX = "bounces"
MAX_LOCAL_PART = 64
TAG_LENGTH = 8
TOKEN_LENGTH = 5

# A copy can come back long after it was sent: MTAs keep retrying for 4 to 5
# days by default (Postfix, Exim, Sendmail), some for a week, and the bounce
# itself may wait in a queue.
DEFAULT_MAX_AGE_DAYS = 10

# Bounces dated a little ahead of our clock come from nodes whose clocks run a
# little ahead; more than this is not a bounce of ours.
_FUTURE_TOLERANCE = datetime.timedelta(days=1)

_READABLE_PURPOSE = "verp-readable-v2"
_COMPACT_PURPOSE = "verp-compact-v2"
# Version 1 (no copy token): decoded only, see the module docstring.
_READABLE_V1 = "verp-readable-v1"
_COMPACT_V1 = "verp-compact-v1"

_MAX_ID = 2**63 - 1

# Decoding never needs more; refusing early keeps fuzzed input cheap.
_MAX_INPUT = 1024

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._")
_ASCII_LOWER = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"
)

_DATE_RE = re.compile(r"([0-9]{8})([A-Za-z2-7]{%d})?" % (TOKEN_LENGTH,))
_TOKEN_RE = re.compile(r"[a-z2-7]{%d}" % (TOKEN_LENGTH,))
_TAG_RE = re.compile(r"[A-Za-z2-7]{%d}" % (TAG_LENGTH,))
_ID_RE = re.compile(r"0|[1-9][0-9]{0,18}")
_ENCODED_RE = re.compile(r"(?:[A-Za-z0-9._]|\+[0-9A-Fa-f]{2})+")
_ESCAPE_RE = re.compile(r"\+([0-9A-Fa-f]{2})")


class InvalidVerp(TrackerError):
    """
    The address is not a genuine VERP address of ours: it is malformed, its tag
    is missing or wrong, or it names another domain. The bounce is to be
    logged and ignored.
    """


@dataclass(frozen=True)
class VerpInfo:
    """
    What a VERP address says: the day the copy was sent, either the
    recipient's address (readable form) or its stored id (compact form),
    and the copy token (None in version-1 addresses).
    """

    day: datetime.date
    email: str | None = None
    email_id: int | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if (self.email is None) == (self.email_id is None):
            raise ValueError("exactly one of email and email_id must be set")

    @property
    def copy(self) -> str | None:
        """
        The identity of the copy this address was the sender of, the same
        for every bounce of that copy (case-insensitive), or None for a
        version-1 address, which names no copy.
        """
        if self.token is None:
            return None
        who = _fold(self.email) if self.email is not None else f"#{self.email_id}"
        return f"{_date_text(self.day)}{self.token}:{who}"


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_PLAIN = re.compile(r"[A-Za-z0-9._]*")


def _has_control(text: str) -> bool:
    # C0 controls, DEL and C1 controls: a recipient holding them could inject
    # into an SMTP command line or a header, so they are neither encoded nor
    # decoded.
    return _CONTROL.search(text) is not None


def _fold(recipient: str) -> str:
    """
    The recipient as the tag sees it: MTAs may change the case of the ASCII
    letters of a local part (and the encoded form is all ASCII), nothing else.
    """
    return recipient.translate(_ASCII_LOWER)


def _tag(secret: str, purpose: str, date: str, token: str | None, subject: str | int) -> str:
    if token is None:
        digest = keyed_digest(secret, purpose, date, subject)
    else:
        digest = keyed_digest(secret, purpose, date, token, subject)
    # Base32 turns each 5 bytes into 8 characters independently, so encoding
    # just the bytes the tag needs gives the same prefix, cheaper.
    return base64.b32encode(digest[: (TAG_LENGTH * 5 + 7) // 8]).decode("ascii")[
        :TAG_LENGTH
    ].lower()


def _date_text(day: datetime.date) -> str:
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def _encode_part(text: str, out: list[str]) -> None:
    if _PLAIN.fullmatch(text) and ".." not in text:
        # The common case (nothing to escape), without a loop per character.
        out.append(text)
        return
    for char in text:
        if char in _SAFE and not (
            char == "." and out and out[-1].endswith(".")
        ):
            out.append(char)
        else:
            out.extend(f"+{byte:02X}" for byte in char.encode("utf-8"))


def _encode_recipient(recipient: str) -> str:
    """
    Encode C{recipient} for the readable form.

    @raise ValueError: if it has no C{@}, an empty local part or domain,
        control characters, or lone surrogates.
    """
    local, at, domain = recipient.rpartition("@")
    if not at or not local or not domain:
        raise ValueError("the recipient needs a local part, an @ and a domain")
    if _has_control(recipient):
        raise ValueError("the recipient contains control characters")
    try:
        recipient.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the recipient is not valid Unicode") from None
    # The separating "-" before the recipient is not a dot, so only the dots of
    # the recipient itself can make "..".
    out: list[str] = []
    _encode_part(local, out)
    out.append("=")
    _encode_part(domain, out)
    encoded = "".join(out)
    if encoded.endswith("."):
        encoded = encoded[:-1] + "+2E"
    return encoded


def _check_day(day: datetime.date) -> None:
    # A datetime is a date too, but its time would silently be dropped.
    if not isinstance(day, datetime.date) or isinstance(day, datetime.datetime):
        raise TypeError("day must be a datetime.date")


def new_token() -> str:
    """A fresh copy token: C{TOKEN_LENGTH} random base32 characters."""
    return base64.b32encode(os.urandom(5)).decode("ascii")[:TOKEN_LENGTH].lower()


def signer(day: datetime.date, secret: str, fqdn: str, token: str | None = None):
    """
    C{sign(recipient, email_id=None)}: the envelope sender of each copy of
    one fan-out sent on C{day} (see L{encode}; one token for the fan-out, a
    new one when C{token} is None). The arguments are checked once, not per
    copy: planning a fan-out signs one address per recipient.

    @raise ValueError: on an empty secret, a bad C{fqdn} or a malformed
        C{token}.
    """
    _check_day(day)
    if not secret:
        raise ValueError("a non-empty secret key is required")
    if not isinstance(fqdn, str) or not fqdn or _has_control(fqdn) or any(
        c in fqdn for c in "@<> \t"
    ):
        raise ValueError(f"not a usable domain: {fqdn!r}")
    if token is None:
        token = new_token()
    elif not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        raise ValueError(f"not a copy token: {token!r}")
    date = _date_text(day)
    head = f"{LOCAL_PREFIX}+{date}{token}-"
    at_fqdn = "@" + fqdn

    def sign(recipient: str, email_id: int | None = None) -> str:
        if email_id is not None:
            if isinstance(email_id, bool) or not isinstance(email_id, int):
                raise TypeError("email_id must be an int")
            if not 0 <= email_id <= _MAX_ID:
                raise ValueError("email_id out of range")
        if not isinstance(recipient, str):
            raise TypeError("recipient must be a str")
        try:
            encoded = _encode_recipient(recipient)
        except ValueError:
            if email_id is None:
                raise
        else:
            local = head + _tag(secret, _READABLE_PURPOSE, date, token, _fold(recipient)) \
                + "-" + encoded
            if len(local) <= MAX_LOCAL_PART:
                return local + at_fqdn
            if email_id is None:
                raise ValueError(
                    f"the VERP local part for this recipient would be {len(local)} "
                    f"octets (limit {MAX_LOCAL_PART}); pass email_id for the "
                    f"compact form"
                )
        tag = _tag(secret, _COMPACT_PURPOSE, date, token, email_id)
        return f"{head}{tag}-{email_id}{at_fqdn}"

    return sign


def encode(
    recipient: str,
    day: datetime.date,
    secret: str,
    fqdn: str,
    email_id: int | None = None,
    token: str | None = None,
) -> str:
    """
    Make the envelope sender of a copy sent to C{recipient} on C{day}.

    The readable form is used when it can be: when the recipient can be
    encoded and the local part stays within 64 octets. Otherwise the compact
    form carrying C{email_id} is used; a caller that always passes the id
    therefore always gets an address, whatever is stored as the recipient.

    @param recipient: the subscriber's address.
    @param day: the day the copy is sent.
    @param secret: the tracker's C{secret_key}.
    @param fqdn: the tracker's domain.
    @param email_id: the stored id of C{recipient}, for the compact form.
    @param token: the copy token of the fan-out (L{new_token}); a new one
        when None, i.e. a copy of its own.
    @return: C{bounces+...@FQDN}.
    @raise ValueError: if neither form can be made (the readable form is
        impossible or too long and C{email_id} is None), or on an empty
        secret, a bad C{fqdn}, a bad token or a negative C{email_id}.
    """
    return signer(day, secret, fqdn, token)(recipient, email_id)


def _snippet(text: str) -> str:
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


def _decode_part(encoded: str) -> str:
    if not _ENCODED_RE.fullmatch(encoded):
        raise InvalidVerp("bad characters in the encoded recipient")
    # split() with a group alternates literal text (safe ASCII, checked above)
    # and the two hex digits of an escape.
    pieces = _ESCAPE_RE.split(encoded)
    data = bytearray()
    for index, piece in enumerate(pieces):
        if index % 2:
            data.append(int(piece, 16))
        else:
            data += piece.encode("ascii")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidVerp("the encoded recipient is not UTF-8") from None


def decode_local(local_part_after_plus: str, secret: str) -> VerpInfo:
    """
    Decode and verify the part of a VERP local part after C{bounces+}.

    @param local_part_after_plus: the text after C{bounces+}, e.g.
        C{20240131k3x7q-lgqkgurz-jane+2Bdebian=example.org} (or a version-1
        C{20240131-p6wc4obs-jane+2Bdebian=example.org}).
    @param secret: the tracker's C{secret_key}.
    @raise InvalidVerp: for anything that is not a genuine VERP address made
        with C{secret}; no other exception escapes for any text.
    @raise ValueError: if C{secret} is empty (a configuration error).
    """
    if not secret:
        raise ValueError("a non-empty secret key is required")
    text = local_part_after_plus
    if not isinstance(text, str):
        raise InvalidVerp("the VERP address is not text")
    if len(text) > _MAX_INPUT:
        raise InvalidVerp("the VERP address is too long")
    parts = text.split("-", 2)
    if len(parts) != 3:
        raise InvalidVerp(f"not a VERP address: {_snippet(text)}")
    field, tag, rest = parts
    match = _DATE_RE.fullmatch(field)
    if not match:
        raise InvalidVerp(f"bad date in VERP address: {_snippet(text)}")
    date, token = match.group(1), match.group(2)
    if token is None:
        readable, compact = _READABLE_V1, _COMPACT_V1
    else:
        token = token.lower()
        readable, compact = _READABLE_PURPOSE, _COMPACT_PURPOSE
    try:
        day = datetime.date(int(date[:4]), int(date[4:6]), int(date[6:]))
    except ValueError:
        raise InvalidVerp(f"bad date in VERP address: {_snippet(text)}") from None
    if not _TAG_RE.fullmatch(tag):
        raise InvalidVerp(f"missing or malformed tag: {_snippet(text)}")
    tag = tag.lower()

    if "=" in rest:
        local, equals, domain = rest.partition("=")
        if not local or not domain or "=" in domain:
            raise InvalidVerp(f"bad recipient in VERP address: {_snippet(text)}")
        recipient = _decode_part(local) + "@" + _decode_part(domain)
        if _has_control(recipient):
            raise InvalidVerp("control characters in the encoded recipient")
        expected = _tag(secret, readable, date, token, _fold(recipient))
        if not hmac.compare_digest(expected, tag):
            raise InvalidVerp(f"wrong tag in VERP address: {_snippet(text)}")
        return VerpInfo(day=day, email=recipient, token=token)

    if not _ID_RE.fullmatch(rest):
        raise InvalidVerp(f"bad recipient in VERP address: {_snippet(text)}")
    email_id = int(rest)
    if email_id > _MAX_ID:
        raise InvalidVerp(f"bad recipient in VERP address: {_snippet(text)}")
    expected = _tag(secret, compact, date, token, email_id)
    if not hmac.compare_digest(expected, tag):
        raise InvalidVerp(f"wrong tag in VERP address: {_snippet(text)}")
    return VerpInfo(day=day, email_id=email_id, token=token)


def decode(address: str, secret: str, fqdn: str) -> VerpInfo:
    """
    Decode and verify a whole VERP address, C{bounces+...@FQDN}.

    The domain is compared case-insensitively (and a final dot ignored); one
    pair of angle brackets and surrounding blanks are tolerated.

    @raise InvalidVerp: for anything that is not a genuine VERP address of
        ours; no other exception escapes for any text.
    @raise ValueError: if C{secret} is empty (a configuration error).
    """
    if not secret:
        raise ValueError("a non-empty secret key is required")
    if not isinstance(address, str):
        raise InvalidVerp("the VERP address is not text")
    if len(address) > _MAX_INPUT:
        raise InvalidVerp("the VERP address is too long")
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    local, at, domain = text.rpartition("@")
    if not at:
        raise InvalidVerp(f"not an address: {_snippet(address)}")
    if _fold(domain.rstrip(".")) != _fold(fqdn.rstrip(".")):
        raise InvalidVerp(f"VERP address of another domain: {_snippet(address)}")
    prefix = LOCAL_PREFIX + "+"
    if _fold(local[: len(prefix)]) != prefix:
        raise InvalidVerp(f"not a VERP address: {_snippet(address)}")
    return decode_local(local[len(prefix) :], secret)


def is_expired(
    info: VerpInfo,
    today: datetime.date,
    max_age_days: int = DEFAULT_MAX_AGE_DAYS,
) -> bool:
    """
    Whether a bounce to this VERP address is too old, or dated too far in the
    future, to be counted.

    L{decode} never expires anything itself: the policy decides, with this.

    @param info: a decoded VERP address.
    @param today: the current day.
    @param max_age_days: a bounce of a copy sent that many days ago still
        counts; one day more does not.
    @return: C{True} if C{info.day} is more than C{max_age_days} before
        C{today} or more than one day after it.
    """
    _check_day(today)
    if isinstance(max_age_days, bool) or not isinstance(max_age_days, int):
        raise TypeError("max_age_days must be an int")
    if max_age_days < 0:
        raise ValueError("max_age_days must not be negative")
    # Subtracting dates cannot overflow, unlike adding a tolerance to today.
    age = today - info.day
    return age < -_FUTURE_TOLERANCE or age.days > max_age_days
