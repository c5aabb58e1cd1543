# -*- test-case-name: tests.test_signing -*-
"""
Keyed signatures made with the tracker's C{secret_key}.

Two things live here:

  - L{keyed_digest}, the one HMAC primitive: every signed thing in trackermail
    (VERP tags, unsubscribe tokens) names its own purpose, so a MAC made for one
    purpose never verifies as another, even though they share one secret.

  - The one-click unsubscribe token of RFC 8058: C{List-Unsubscribe:
    <https://FQDN/unsubscribe/TOKEN>}. The token carries the package, the
    address and the time it was issued, signed, so the HTTP side needs no
    stored state to act on it, and it expires.

Token syntax: C{PAYLOAD.MAC}, both base64url without padding, so the token is
safe in a URL path segment as it is. PAYLOAD is the JSON array C{[issued,
package, email]}. MAC is the first 16 bytes of HMAC-SHA256 over the PAYLOAD
I{text}: the check compares MAC texts, so base64's spare bits cannot make two
different tokens verify.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re

from trackermail.errors import TrackerError

__all__ = [
    "keyed_digest",
    "make_unsubscribe_token",
    "check_unsubscribe_token",
    "InvalidToken",
    "ExpiredToken",
    "DEFAULT_MAX_AGE_DAYS",
]

DEFAULT_MAX_AGE_DAYS = 60

# A token issued this far in our future can only come from a node whose clock
# was wrong when it signed; beyond it we refuse rather than let a token live
# for years.
_CLOCK_SKEW = 86400

# An honest token is well under 1 kB (an address is at most 254 octets); refuse
# to even look at huge input.
_MAX_TOKEN_LENGTH = 4096

_MAC_BYTES = 16

_TOKEN_PURPOSE = "unsubscribe-token-v1"

_TOKEN_RE = re.compile(r"\A([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\Z")


class InvalidToken(TrackerError):
    """
    The unsubscribe token is malformed, was not made with our secret, or was
    altered. The HTTP side answers it with a 4xx page and changes nothing.
    """


class ExpiredToken(InvalidToken):
    """
    The unsubscribe token is genuine but too old. The HTTP side answers it with
    a 4xx page; since the signature was good, L{package} and L{email} say what
    the link was for, so the page can tell the reader how to unsubscribe by
    mail instead.
    """

    def __init__(self, message: str, package: str, email: str) -> None:
        super().__init__(message)
        self.package = package
        self.email = email


def _secret_bytes(secret: str) -> bytes:
    if not isinstance(secret, str) or not secret:
        raise ValueError("a non-empty secret key is required")
    # surrogatepass: a secret read from odd bytes must still give a key, not a
    # crash in the middle of sending mail.
    return secret.encode("utf-8", "surrogatepass")


def _field_bytes(field: str | bytes | int) -> bytes:
    if isinstance(field, bool):
        raise TypeError("booleans are not signable fields")
    if isinstance(field, int):
        return b"i" + str(field).encode("ascii")
    if isinstance(field, str):
        return b"s" + field.encode("utf-8", "surrogatepass")
    if isinstance(field, bytes):
        return b"b" + field
    raise TypeError(f"cannot sign a {type(field).__name__}")


def keyed_digest(secret: str, purpose: str, *fields: str | bytes | int) -> bytes:
    """
    HMAC-SHA256, keyed with C{secret}, over C{purpose} and C{fields}.

    Each field is typed and length-prefixed, so no two different lists of
    fields give the same MAC input (C{("ab", "c")} and C{("a", "bc")} differ),
    and the purpose keeps MACs made for one use from verifying for another.

    @raise ValueError: if C{secret} is empty.
    @return: the 32-byte digest.
    """
    key = _secret_bytes(secret)
    pieces = []
    for part in (purpose.encode("utf-8", "surrogatepass"),) + tuple(
        _field_bytes(f) for f in fields
    ):
        pieces.append(len(part).to_bytes(8, "big"))
        pieces.append(part)
    # One-shot HMAC (OpenSSL, no Python-level object): a fan-out signs one
    # VERP address per recipient.
    return hmac.digest(key, b"".join(pieces), "sha256")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _token_mac(secret: str, payload: str) -> str:
    return _b64encode(
        keyed_digest(secret, _TOKEN_PURPOSE, payload)[:_MAC_BYTES]
    )


def _check_now(now: int) -> None:
    if isinstance(now, bool) or not isinstance(now, int):
        raise TypeError("now must be an int (seconds since the epoch)")


def make_unsubscribe_token(secret: str, package: str, email: str, now: int) -> str:
    """
    Make the signed token of a one-click unsubscribe link.

    @param secret: the tracker's C{secret_key}.
    @param package: the package the link unsubscribes from.
    @param email: the subscriber's address, as stored.
    @param now: the issue time, in seconds since the epoch.
    @return: a URL-safe token (C{[A-Za-z0-9_.-]}).
    @raise ValueError: on an empty secret, package or address, or a negative
        time.
    """
    _secret_bytes(secret)
    _check_now(now)
    if now < 0:
        raise ValueError("now must not be negative")
    for name, value in (("package", package), ("email", email)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str")
        if not value:
            raise ValueError(f"{name} must not be empty")
    payload = _b64encode(
        json.dumps([now, package, email], separators=(",", ":")).encode("ascii")
    )
    return payload + "." + _token_mac(secret, payload)


def check_unsubscribe_token(
    secret: str, token: str, now: int, max_age_days: int = DEFAULT_MAX_AGE_DAYS
) -> tuple[str, str]:
    """
    Verify a one-click unsubscribe token.

    A token is valid from its issue time until C{max_age_days} days after it,
    inclusive. Any input, however malformed, gives either a result or one of
    the two exceptions below.

    @param secret: the tracker's C{secret_key}.
    @param token: the token from the URL.
    @param now: the current time, in seconds since the epoch.
    @param max_age_days: how long a token lives.
    @return: C{(package, email)}.
    @raise ExpiredToken: the token is genuine but older than C{max_age_days}.
    @raise InvalidToken: anything else wrong with the token (malformed, altered,
        signed with another secret, issued too far in the future).
    @raise ValueError: if C{secret} is empty or C{max_age_days} negative:
        configuration errors, not bad input.
    """
    _secret_bytes(secret)
    _check_now(now)
    if isinstance(max_age_days, bool) or not isinstance(max_age_days, int):
        raise TypeError("max_age_days must be an int")
    if max_age_days < 0:
        raise ValueError("max_age_days must not be negative")
    if not isinstance(token, str):
        raise InvalidToken("the token is not text")
    if len(token) > _MAX_TOKEN_LENGTH:
        raise InvalidToken("the token is too long")
    match = _TOKEN_RE.match(token)
    if match is None:
        raise InvalidToken("the token is malformed")
    payload, given_mac = match.groups()
    if not hmac.compare_digest(_token_mac(secret, payload), given_mac):
        raise InvalidToken("the token's signature does not match")

    # Only signed data gets this far, so a failure below means our own format
    # changed; still, answer it as a bad token rather than crash.
    try:
        issued, package, email = json.loads(_b64decode(payload))
    except (ValueError, TypeError, binascii.Error):
        raise InvalidToken("the token's content is malformed") from None
    if (
        isinstance(issued, bool)
        or not isinstance(issued, int)
        or not isinstance(package, str)
        or not isinstance(email, str)
        or not package
        or not email
    ):
        raise InvalidToken("the token's content is malformed")

    if issued > now + _CLOCK_SKEW:
        raise InvalidToken("the token was issued in the future")
    if now - issued > max_age_days * 86400:
        raise ExpiredToken("the token has expired", package, email)
    return package, email
