# -*- test-case-name: tests.test_routing -*-
"""
Delivery address -> service.

Two questions are answered here, both without touching the store so that the
SMTP/LMTP servers can answer C{RCPT TO} synchronously:

  - L{route_address}: is this address one of ours, and which service does it
    reach (control, dispatch, team, bounces)?
  - L{find_delivery_address}: which of our addresses was a stored message
    delivered to (C{Delivered-To} and friends)?
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any, Iterable

from trackermail.errors import PermanentFailure, TrackerError
from trackermail.message import header_values
from trackermail.validation import is_keyword, is_package_name, is_slug

# Local parts that must never be read as a package name, even when
# unqualified addresses are enabled: role accounts (RFC 2142) and our own
# service names.
RESERVED_LOCAL_PARTS = frozenset(
    {
        "postmaster", "abuse", "owner", "root", "hostmaster", "webmaster",
        "mailer-daemon", "security", "noc", "www", "uucp", "news", "ftp",
        "nobody", "noreply", "no-reply",
        "control", "dispatch", "team", "bounces",
    }
)

DELIVERY_HEADERS = ("Delivered-To", "Envelope-To", "X-Original-To", "X-Envelope-To")


@dataclass(frozen=True)
class Route:
    """
    Where a delivery address leads.

    @ivar service: C{"control"}, C{"dispatch"}, C{"team"} or C{"bounces"}.
    @ivar address: the full address, lowercased.
    @ivar package: the package named by the address (dispatch), or None.
    @ivar keyword: the keyword named by the address (dispatch), or None.
    @ivar team: the team slug (team), or None.
    @ivar verp: the text after C{bounces+}, in its original case (bounces).
    """

    service: str
    address: str
    package: str | None = None
    keyword: str | None = None
    team: str | None = None
    verp: str | None = None


class Rejection(TrackerError):
    """
    An address we refuse at C{RCPT TO}; carries the SMTP reply.
    """

    code = 550
    status = "5.1.1"
    text = "Recipient address rejected"

    def __init__(self, address: str, text: str | None = None):
        self.address = address
        if text is not None:
            self.text = text
        super().__init__(f"{self.code} {self.status} <{address}>: {self.text}")


class NotOurDomain(Rejection):
    """
    The address is in another domain: we are not a relay.
    """

    code = 550
    status = "5.7.1"
    text = "Relay access denied"


class UnknownRecipient(Rejection):
    """
    The address is in our domain but reaches no service.
    """

    code = 550
    status = "5.1.1"
    text = "User unknown"


class NoDeliveryAddress(PermanentFailure):
    """
    The message names none of our addresses in its delivery headers.
    """


class ConflictingDeliveryAddresses(PermanentFailure):
    """
    The message names more than one distinct address of ours.
    """


def _split_dispatch_target(rest: str, address: str) -> Route:
    package, sep, keyword = rest.partition("_")
    if not is_package_name(package):
        raise UnknownRecipient(address)
    if sep and not is_keyword(keyword):
        raise UnknownRecipient(address)
    return Route("dispatch", address, package=package, keyword=keyword if sep else None)


def route_address(address: str, fqdn: str, accept_unqualified: bool) -> Route:
    """
    Decide which service C{address} reaches.

    @raise NotOurDomain: the address is not at C{fqdn}.
    @raise UnknownRecipient: it is, but names no service.
    """
    original = address.strip()
    if original.startswith("<") and original.endswith(">"):
        original = original[1:-1]
    local, at, domain = original.rpartition("@")
    if not at or not local:
        raise UnknownRecipient(original)
    if domain.lower().rstrip(".") != fqdn.lower():
        raise NotOurDomain(original)
    lower_local = local.lower()
    full = f"{lower_local}@{fqdn.lower()}"

    if lower_local in ("control", "dispatch"):
        return Route(lower_local, full)
    prefix, plus, rest = lower_local.partition("+")
    if plus:
        if prefix == "dispatch" and rest:
            return _split_dispatch_target(rest, full)
        if prefix == "team" and is_slug(rest):
            return Route("team", full, team=rest)
        if prefix == "bounces" and rest:
            # The VERP part keeps its case: an encoder may rely on it.
            return Route("bounces", full, verp=local.partition("+")[2])
        if prefix in ("control", "dispatch", "team", "bounces"):
            raise UnknownRecipient(full)
    if accept_unqualified:
        package = lower_local.partition("_")[0]
        if package not in RESERVED_LOCAL_PARTS:
            return _split_dispatch_target(lower_local, full)
    raise UnknownRecipient(full)


def _header_values(msg_or_headers: Any, name: str) -> list[str]:
    if hasattr(msg_or_headers, "get_all"):
        return header_values(msg_or_headers, name)
    if isinstance(msg_or_headers, dict):
        raw = [v for k, v in msg_or_headers.items() if str(k).lower() == name.lower()]
    else:
        raw = [v for k, v in _pairs(msg_or_headers) if k.lower() == name.lower()]
    return [v.decode("ascii", "replace") if isinstance(v, bytes) else str(v) for v in raw]


def _pairs(headers: Iterable[Any]) -> Iterable[tuple[str, Any]]:
    for item in headers:
        try:
            key, value = item
        except (TypeError, ValueError):
            continue
        if isinstance(key, bytes):
            key = key.decode("ascii", "replace")
        yield str(key), value


def find_delivery_address(msg_or_headers: Any, fqdn: str,
                          extra: Iterable[tuple[str, str]] = ()) -> str:
    """
    Return the one address at C{fqdn} that the message was delivered to.
    C{extra} are header pairs read from above the message (the delivery
    lines on top of a file).

    C{msg_or_headers} is an C{email.message.Message}, a mapping, or an
    iterable of C{(name, value)} pairs. Addresses are compared without regard
    to case; the first spelling seen is returned, its domain lowercased.

    @raise NoDeliveryAddress: none of the delivery headers names us.
    @raise ConflictingDeliveryAddresses: they name more than one address.
    """
    suffix = "@" + fqdn.lower()
    found: dict[str, str] = {}
    extra = list(extra)
    for name in DELIVERY_HEADERS:
        values = _header_values(extra, name) + _header_values(msg_or_headers, name)
        for value in values:
            # Undecodable bytes come through as surrogates or U+FFFD; neither
            # can be part of an address of ours, so they simply never match.
            value = value.replace("\r", " ").replace("\n", " ")
            try:
                pairs = getaddresses([value])
            except Exception:
                pairs = []
            candidates = [addr for _, addr in pairs if addr] or value.split()
            for addr in candidates:
                addr = addr.strip().strip("<>").rstrip(".")
                if not addr.lower().endswith(suffix) or len(addr) <= len(suffix):
                    continue
                local = addr[: -len(suffix)]
                if any(c.isspace() or ord(c) > 126 for c in local):
                    continue
                found.setdefault(addr.lower(), local + suffix)
    if not found:
        raise NoDeliveryAddress(f"no delivery address at {fqdn} in the headers")
    if len(found) > 1:
        raise ConflictingDeliveryAddresses(
            "more than one delivery address: " + ", ".join(sorted(found))
        )
    return next(iter(found.values()))
