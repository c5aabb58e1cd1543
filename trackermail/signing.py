# -*- test-case-name: tests.test_signing -*-
"""
Keyed signatures made with the tracker's C{secret_key}.

Two things live here:

  - L{keyed_digest}, the one HMAC primitive: every signed thing in trackermail
    (VERP tags, unsubscribe tokens) names its own purpose, so a MAC made for one
    purpose never verifies as another, even though they share one secret.

  - The unsubscribe token of one subscription, carried by every copy sent to
    a direct subscriber: in the one-click link of RFC 8058
    (C{<https://FQDN/unsubscribe/TOKEN>}) and in the C{mailto:} of
    C{List-Unsubscribe} (C{subject=unsubscribe PKG TOKEN}).

Token syntax: C{ID.MAC}. ID is the subscription's row id in decimal; MAC is
the first 16 bytes of L{keyed_digest} (HMAC-SHA256), base64url without
padding (22 characters), over the package, the id, the address (lower case)
and the subscription's salt (random text drawn when it started). The token says
nothing by itself: whoever checks it looks the subscription up by its id and
recomputes the MAC from what is stored. So a token proves that its bearer
got mail for that very subscription, and dies with it: once the subscription
ends, no later one (not even one that reuses the row id) has the same salt.
A token is made with one HMAC, cheap enough for every copy of a fan-out.
"""

from __future__ import annotations

import binascii
import hmac
import re
from typing import Callable

from trackermail.errors import TrackerError

__all__ = [
    "keyed_digest",
    "subscription_token",
    "subscription_signer",
    "parse_subscription_token",
    "subscription_token_matches",
    "InvalidToken",
]

_MAC_BYTES = 16

_TOKEN_PURPOSE = "unsubscribe-subscription-v1"

# Ids are BIGINT (at most 19 digits); the MAC is 22 base64url characters.
_TOKEN_RE = re.compile(r"\A([1-9][0-9]{0,18})\.([A-Za-z0-9_-]{22})\Z")
_MAX_ID = 2**63 - 1


class InvalidToken(TrackerError):
    """
    The unsubscribe token is malformed. (Whether a well-formed token belongs
    to a current subscription is for the store to say.)
    """


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


_B64URL = bytes.maketrans(b"+/", b"-_")


def _b64encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_B64URL).rstrip(b"=").decode(
        "ascii")


def _piece(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def subscription_signer(secret: str, package: str) -> Callable[[int, str, str], str]:
    """
    C{token(subscription_id, email_lower, salt)} for subscriptions to
    C{package}: what L{subscription_token} makes, with the key and the part
    of the MAC input all of a fan-out's copies share encoded once, so that
    each token costs one HMAC and little else.

    @raise ValueError: on an empty secret.
    """
    key = _secret_bytes(secret)
    head = _piece(_TOKEN_PURPOSE.encode("ascii")) + _piece(_field_bytes(package))

    def token(subscription_id: int, email_lower: str, salt: str) -> str:
        if isinstance(subscription_id, bool) or not isinstance(subscription_id, int):
            raise TypeError("subscription_id must be an int")
        if not 0 < subscription_id <= _MAX_ID:
            raise ValueError("subscription_id out of range")
        data = b"".join((
            head,
            _piece(b"i%d" % subscription_id),
            _piece(b"s" + email_lower.encode("utf-8", "surrogatepass")),
            _piece(b"s" + salt.encode("utf-8", "surrogatepass")),
        ))
        mac = hmac.digest(key, data, "sha256")[:_MAC_BYTES]
        return f"{subscription_id}.{_b64encode(mac)}"

    return token


def subscription_token(secret: str, subscription_id: int, package: str,
                       email_lower: str, salt: str) -> str:
    """
    The unsubscribe token of one subscription: the MAC is
    L{keyed_digest} over the package, the id, the address and the salt.

    @param secret: the tracker's C{secret_key}.
    @param subscription_id: the subscription's row id.
    @param package: the package subscribed to.
    @param email_lower: the subscriber's address in lower case.
    @param salt: the subscription's salt (C{""} when it has none).
    @return: C{ID.MAC}, safe as it is in a URL path and a mail subject.
    @raise ValueError: on an empty secret or an id out of range.
    """
    return subscription_signer(secret, package)(subscription_id, email_lower, salt)


def parse_subscription_token(token) -> tuple[int, str]:
    """
    C{(subscription id, MAC text)} of a token, without checking the MAC.

    @raise InvalidToken: for anything that is not shaped like a token.
    """
    if not isinstance(token, str) or len(token) > 64:
        raise InvalidToken("not an unsubscribe token")
    match = _TOKEN_RE.match(token)
    if match is None:
        raise InvalidToken("not an unsubscribe token")
    subscription_id = int(match.group(1))
    if subscription_id > _MAX_ID:
        raise InvalidToken("not an unsubscribe token")
    return subscription_id, match.group(2)


def subscription_token_matches(secret: str, mac: str, subscription_id: int, package: str,
                               email_lower: str, salt: str) -> bool:
    """Whether C{mac} is the MAC of that subscription (constant-time compare)."""
    expected = subscription_token(secret, subscription_id, package, email_lower, salt)
    return hmac.compare_digest(expected.partition(".")[2], mac)
