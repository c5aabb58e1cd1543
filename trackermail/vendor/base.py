# -*- test-case-name: tests.vendor.test_generic -*-
"""
The vendor hook: the distribution-specific rules of classification.

A vendor is selected by C{[tracker] vendor} and is one object providing
L{IVendor}. C{generic} has no rules; C{debian} knows the mail of Debian's bug
tracker, archive, build daemons, release team and VCS hosting.

This module also holds the helpers vendors use to read a message without
ever raising: a message that reaches the tracker may have undecodable or
malformed headers, a broken MIME structure or a 20 MiB body, and a rule that
raises on one of them must not stop the mail from being classified.
"""

from __future__ import annotations

import binascii
import importlib
import quopri
import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.utils import getaddresses, parseaddr
from typing import Iterable

from zope.interface import Attribute, Interface

from trackermail.errors import ConfigError


class SkipMessage(Exception):
    """
    The vendor says: do not forward this message (it is dropped, and logged).
    """


@dataclass(frozen=True)
class NewsSource:
    """
    A vendor's verdict that a message is news for C{package}.

    @ivar create_package: whether the package name is created when the
        tracker does not know it yet (accepted uploads of new packages).
    @ivar created_by: who the news item is attributed to; L{None} means the
        message's sender.
    """

    package: str
    create_package: bool = False
    created_by: str | None = None


class IVendor(Interface):
    """
    The distribution-specific rules used by dispatch.

    Every method receives an C{email.message.Message} (normally parsed with
    C{email.policy.default}) and must not raise on malformed input, except
    L{SkipMessage} from L{classify}.
    """

    name = Attribute("The name C{[tracker] vendor} selects this vendor by.")

    def classify(msg, package, keyword):
        """
        Find the package(s) and keyword of a message.

        @param package: the package suggested so far (address or
            C{X-Distro-Tracker-Package}), or L{None}.
        @param keyword: the keyword suggested so far, or L{None}.
        @return: C{(packages, keyword)}: a tuple of package names, possibly
            empty, and a keyword or L{None}. Returning the suggestions
            unchanged means "no rule applies".
        @raise SkipMessage: the message must not be forwarded.
        """

    def approve_default(msg):
        """
        Whether a message classified C{default} is forwarded anyway.

        @return: L{bool}
        """

    def extra_headers(msg, package, keyword, team):
        """
        Headers the vendor adds to every forwarded copy.

        @param package: the package the copy is forwarded for, or L{None}
            (mail to a team).
        @param team: the team slug of a team copy, or L{None}.
        @return: a list of C{(name, value)} pairs.
        """

    def news(msg, packages, keyword):
        """
        Which packages the classified message is news for.

        @param packages: the packages the message was classified to.
        @return: a list of L{NewsSource}.
        """


# Vendors are looked up in this table, not imported by arbitrary name from
# the configuration: a typo must be a configuration error, not an import of
# some other module.
_VENDORS = {
    "generic": "trackermail.vendor.generic",
    "debian": "trackermail.vendor.debian",
}


def load_vendor(name: str) -> IVendor:
    """
    Return the vendor called C{name}.

    @raise ConfigError: no vendor has that name.
    """
    module_name = _VENDORS.get(name)
    if module_name is None:
        known = ", ".join(sorted(_VENDORS))
        raise ConfigError(
            f"[tracker] vendor: unknown vendor {name!r} (known: {known})"
        )
    return importlib.import_module(module_name).vendor


# ---------------------------------------------------------------------------
# Reading messages safely

#: The most text of a message body rules look at (characters). Archive mails
#: are far smaller; a larger body is a mistake or an attack, and scanning its
#: first part is enough to recognise anything a rule looks for.
MAX_BODY_TEXT = 4 * 1024 * 1024

_FOLDING = re.compile(r"\r?\n[ \t]*")


def _clean_text(value: str) -> str:
    # Headers holding raw 8-bit bytes come back with surrogate escapes; turn
    # them into text (UTF-8 where it is, U+FFFD elsewhere) so nothing
    # downstream has to know about surrogates.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "surrogateescape").decode(
            "utf-8", "replace"
        )
    return value


def _decode_raw(value: str) -> str:
    value = _FOLDING.sub(" ", _clean_text(value))
    try:
        return str(make_header(decode_header(value)))
    except Exception:
        return value


def header_values(msg, name: str) -> list[str]:
    """
    All values of header C{name}, decoded and unfolded, as text.

    Never raises: a value the header parser rejects is returned as its raw
    text, RFC 2047 decoded where possible.
    """
    try:
        values = msg.get_all(name) or []
        return [_FOLDING.sub(" ", _clean_text(str(v))) for v in values]
    except Exception:
        pass
    result = []
    try:
        raw = msg.raw_items()
    except Exception:
        return result
    lowered = name.lower()
    for key, value in raw:
        if isinstance(key, str) and key.lower() == lowered:
            result.append(_decode_raw(str(value)))
    return result


def header_value(msg, name: str, default: str = "") -> str:
    """
    The first value of header C{name}, stripped, or C{default}.
    """
    values = header_values(msg, name)
    if not values:
        return default
    return values[0].strip()


def has_header(msg, name: str) -> bool:
    """
    Whether the message has a header C{name} (whatever its value).
    """
    try:
        return name in msg
    except Exception:
        return False


def sender_name(msg, header: str = "From") -> str:
    """
    The display name of the sender, else the address, else C{""}.
    """
    for value in header_values(msg, header):
        name, address = parse_address(value)
        if name or address:
            return name or address
    return ""


def parse_address(value: str) -> tuple[str, str]:
    """
    The C{(display name, address)} of the first address in C{value}.
    """
    try:
        pairs = getaddresses([value])
    except Exception:
        pairs = []
    if not pairs:
        try:
            pairs = [parseaddr(value)]
        except Exception:
            return "", value.strip()
    name, address = pairs[0]
    return name.strip(), address.strip()


_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]+")
_SURROGATE = re.compile("[\udc80-\udcff]")


def _transfer_encoding(part) -> str:
    try:
        return str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    except Exception:
        return ""


def _raw_payload(part) -> str | None:
    # The payload as the parser stored it. get_payload() would first scan
    # and re-encode all of it (a 20 MiB copy or two) to keep only the start;
    # _payload has held the parsed text since the email package began.
    payload = getattr(part, "_payload", None)
    if isinstance(payload, str):
        return payload
    try:
        payload = part.get_payload()
    except Exception:
        return None
    return payload if isinstance(payload, str) else None


def _decode(part, data: bytes) -> str:
    try:
        charset = part.get_content_charset() or "utf-8"
    except Exception:
        charset = "utf-8"
    try:
        return data.decode(charset, "replace")
    except (LookupError, TypeError, ValueError):
        return data.decode("utf-8", "replace")


def _part_text(part, limit: int) -> str:
    payload = _raw_payload(part)
    if payload is None or limit <= 0:
        return ""
    encoding = _transfer_encoding(part)
    if encoding == "base64":
        # 4 base64 characters per 3 bytes, plus line breaks.
        chunk = _NOT_BASE64.sub("", payload[: 2 * limit])
        chunk = chunk[: len(chunk) // 4 * 4]
        try:
            return _decode(part, binascii.a2b_base64(chunk))
        except (binascii.Error, ValueError):
            return ""
    if encoding == "quoted-printable":
        data = payload[: 3 * limit].encode("utf-8", "surrogateescape")
        try:
            data = quopri.decodestring(data)
        except Exception:
            pass
        return _decode(part, data)
    text = payload[:limit]
    if _SURROGATE.search(text):
        # The parser holds bytes it could not decode as surrogate escapes:
        # those are in the part's charset.
        return _decode(part, text.encode("utf-8", "surrogateescape"))
    return text


def _is_text_part(part) -> bool:
    try:
        return part.get_content_maintype() == "text"
    except Exception:
        return True


def body_text(msg, limit: int = MAX_BODY_TEXT) -> str:
    """
    The text of the message's C{text/*} leaf parts, joined by newlines.

    Decoded from their transfer encoding and charset (undecodable bytes
    become U+FFFD); attachments that are not text are skipped, so a 20 MiB
    tarball is never decoded. At most C{limit} characters are returned.
    """
    chunks = []
    size = 0
    try:
        parts: Iterable = msg.walk()
        for part in parts:
            try:
                if part.is_multipart():
                    continue
            except Exception:
                continue
            if not _is_text_part(part):
                continue
            text = _part_text(part, limit - size)
            if size + len(text) > limit:
                text = text[: max(0, limit - size)]
            chunks.append(text)
            size += len(text) + 1
            if size >= limit:
                break
    except Exception:
        # A structure the walker chokes on: keep what was read so far.
        pass
    return "\n".join(chunks)
