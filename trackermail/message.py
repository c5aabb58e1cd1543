# -*- test-case-name: tests.test_message -*-
"""
The one place that reads mail: parsing bytes, header values, addresses and
body text, each without ever raising on bad input; and building the mails
the tracker writes itself (control replies, confirmations, notices).

A message that reaches the tracker may have undecodable or malformed
headers, a broken MIME structure or a 20 MiB body. Every reader here
returns something sensible for all of them, so a rule that looks at a
header never has to guard against the email package.
"""

from __future__ import annotations

import binascii
import codecs
import email
import email.policy
import email.utils
import quopri
import re
import secrets
import time
from email.header import Header, decode_header
from email.message import EmailMessage
from email.policy import Compat32, EmailPolicy
from email.utils import getaddresses, parseaddr
from typing import Iterable

from trackermail.errors import PermanentFailure


class UnparsableMessage(PermanentFailure):
    """The bytes are not a mail message at all."""


def parse_message(raw: bytes) -> EmailMessage:
    """
    Parse bytes into an EmailMessage. Broken MIME and undecodable headers do
    not raise here (the email package records defects); only input that is
    not a message at all does.
    """
    if not raw.strip():
        raise UnparsableMessage("empty message")
    try:
        return email.message_from_bytes(raw, policy=email.policy.default)
    except Exception as e:  # pragma: no cover - the parser is very forgiving
        raise UnparsableMessage(f"cannot parse message: {e}")


# ---------------------------------------------------------------------------
# Headers


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


def decode_bytes(data: bytes, charset: str | None = None) -> str:
    """Bytes as text in C{charset}, else UTF-8, else Latin-1: never raises."""
    for cs in (charset, "utf-8"):
        if not cs:
            continue
        try:
            return data.decode(cs)
        except (LookupError, UnicodeDecodeError, TypeError):
            continue
    return data.decode("latin-1")


def decode_raw_header(value) -> str:
    """
    A raw header value (a string with RFC 2047 encoded words, or a
    C{Header}) as text, unfolded; an unknown charset falls back to UTF-8,
    then Latin-1.
    """
    if value is None:
        return ""
    if isinstance(value, Header):
        try:
            return _FOLDING.sub(" ", str(value))
        except Exception:
            value = value.encode() if hasattr(value, "encode") else ""
    value = _FOLDING.sub(" ", _clean_text(str(value)))
    if "=?" not in value:
        return value
    try:
        return "".join(decode_bytes(data, charset) if isinstance(data, bytes) else data
                       for data, charset in decode_header(value))
    except Exception:
        return value


#: Headers whose text the default policy rewrites (addresses, dates, MIME
#: parameters): read through its header objects. Any other header reads
#: the same decoded from the raw value, without the parse tree the policy
#: builds for it, which cost more than the rest of reading a control mail.
_PARSED = frozenset({
    "from", "to", "cc", "bcc", "sender", "reply-to", "resent-from", "resent-to",
    "resent-cc", "resent-bcc", "resent-sender", "date", "resent-date",
    "content-type", "content-disposition", "content-transfer-encoding", "mime-version",
})


def _raw_values(msg, name: str) -> list:
    """The values of header C{name} as the parser stored them, undecoded."""
    try:
        items = msg.raw_items()
    except Exception:
        return []
    lowered = name.lower()
    result = []
    for key, value in items:
        try:
            if str(key).lower() == lowered:
                result.append(value)
        except Exception:
            continue
    return result


def _raw_header_values(msg, name: str) -> list[str]:
    result = []
    for value in _raw_values(msg, name):
        try:
            result.append(decode_raw_header(value))
        except Exception:
            continue
    return result


def header_values(msg, name: str) -> list[str]:
    """
    All values of header C{name}, decoded and unfolded, as text.

    Never raises: a value the header parser rejects is returned as its raw
    text, RFC 2047 decoded where possible. Works for messages parsed with
    the default policy and with C{compat32} (whose values are raw text: the
    bounce analyzer parses that way, it is much cheaper).
    """
    if name.lower() not in _PARSED or (
            isinstance(getattr(msg, "policy", None), Compat32)
            and not isinstance(msg.policy, EmailPolicy)):
        return _raw_header_values(msg, name)
    try:
        values = msg.get_all(name) or []
        return [_FOLDING.sub(" ", _clean_text(str(v))) for v in values]
    except Exception:
        return _raw_header_values(msg, name)


def header(msg, name: str, default: str = "") -> str:
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


def part_text(part, limit: int) -> str:
    """The decoded text of one leaf part, at most C{limit} characters (about)."""
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
            text = part_text(part, limit - size)
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


def header_address(msg, name: str = "From") -> str:
    """
    The bare address in the first header C{name}, or ''. Parsed from the
    raw value, which gives the same address for a tenth of the cost of the
    policy's header object, unless encoded words make the policy's
    decoding matter.
    """
    raw = next(iter(_raw_values(msg, name)), None)
    if not isinstance(raw, str) or "=?" in raw:
        return address_of(header(msg, name, ""))
    return address_of(_FOLDING.sub(" ", _clean_text(raw)))


def address_of(value: str) -> str:
    """The bare address of a From:-style value, or '' when there is none."""
    try:
        _, addr = email.utils.parseaddr(value)
    except Exception:
        return ""
    return addr if "@" in addr else ""


# ---------------------------------------------------------------------------
# The plain-text part a person wrote (control mail)

#: The most characters of a plain-text part that are read.
MAX_PLAIN_CHARS = 1_000_000
#: The most MIME parts looked at for one.
MAX_PARTS = 200


def plain_text(msg, limit: int = MAX_PLAIN_CHARS) -> str | None:
    """
    The first text/plain part that is not an attachment, decoded with its
    charset (bytes that do not decode become U+FFFD; an unknown charset is
    read as UTF-8). None when the mail has no such part.
    """
    try:
        for index, part in enumerate(msg.walk()):
            if index >= MAX_PARTS:
                return None
            if part.is_multipart():
                continue
            if part.get_content_type() != "text/plain":
                continue
            if part.get_content_disposition() == "attachment":
                continue
            return _decoded_payload(part, limit)
    except Exception:
        # A mail the email package cannot even walk has no readable text.
        return None
    return None


def _decoded_payload(part, limit: int) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if not isinstance(payload, bytes):
        payload = b""
    payload = payload[: limit * 4]
    try:
        charset = part.get_content_charset() or "us-ascii"
    except Exception:
        charset = "us-ascii"
    try:
        codec = codecs.lookup(charset).name
    except (LookupError, ValueError, TypeError):
        codec = "utf-8"
    if codec == "ascii":
        # Mail claiming (or defaulting to) ASCII often carries UTF-8 anyway.
        codec = "utf-8"
    try:
        text = payload.decode(codec, errors="replace")
    except Exception:
        # Codecs that are not text encodings (base64, zlib...) or that fail.
        text = payload.decode("utf-8", errors="replace")
    return text[:limit]


# ---------------------------------------------------------------------------
# Mails the tracker writes


def _clean(value: str) -> str:
    # Header values we write come partly from mail we received: never let a
    # CR or LF through (header injection).
    return " ".join(str(value).replace("\r", " ").replace("\n", " ").split())


def make_message_id(fqdn: str) -> str:
    return f"<{int(time.time())}.{secrets.token_hex(8)}@{fqdn}>"


_FOLD_AT = 76
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "reply-to", "sender"})


def _encoded_word_value(value: str) -> str:
    """RFC 2047 encoded words for a value that is not plain ASCII text."""
    from email.header import Header

    return Header(value, "utf-8", maxlinelen=998).encode(linesep="\r\n ")


def _address_list(values: Iterable[str]) -> str:
    out = []
    for value in values:
        name, address = parse_address(_clean(value))
        if name and not name.isascii():
            out.append(email.utils.formataddr((name, address), charset="utf-8"))
        elif name:
            out.append(email.utils.formataddr((name, address)))
        else:
            out.append(address or _clean(value))
    return ", ".join(out)


def _header_line(name: str, value: str) -> str:
    """
    One header field, CRLF-terminated, folded at spaces so that lines stay
    short (RFC 5322 2.1.1); text that is not ASCII, or that would read as
    an encoded word, is RFC 2047 encoded.
    """
    if name.lower() not in _ADDRESS_HEADERS and (not value.isascii() or "=?" in value):
        value = _encoded_word_value(value)
    line = f"{name}: {value}"
    if len(line) <= _FOLD_AT:
        return line + "\r\n"
    folded, current = [], ""
    for word in line.split(" "):
        if current and len(current) + 1 + len(word) > _FOLD_AT:
            folded.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    folded.append(current)
    return "\r\n ".join(folded) + "\r\n"


def _body_bytes(body: str) -> tuple[bytes, str]:
    """The body as CRLF lines and its transfer encoding (7bit, 8bit or quoted-printable)."""
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    data = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    if max((len(line.encode("utf-8")) for line in lines), default=0) > 998:
        return quopri.encodestring(data.replace(b"\r\n", b"\n")).replace(
            b"\n", b"\r\n"), "quoted-printable"
    return data, "7bit" if data.isascii() else "8bit"


def build_mail(
    *,
    fqdn: str,
    from_: str,
    to: str | list[str],
    subject: str,
    body: str,
    cc: list[str] = (),
    headers: list[tuple[str, str]] = (),
    now: float | None = None,
) -> bytes:
    """
    A text/plain UTF-8 mail as CRLF bytes, ready for the outbox.

    Written directly rather than through C{EmailMessage}, which took most
    of the CPU of a control reply: header values are cleaned of line breaks
    (they partly come from received mail), encoded and folded here.
    """
    data, cte = _body_bytes(body)
    lines = [
        _header_line("From", _address_list([from_])),
        _header_line("To", _address_list([to] if isinstance(to, str) else to)),
    ]
    if cc:
        lines.append(_header_line("Cc", _address_list(cc)))
    lines += [
        _header_line("Subject", _clean(subject)),
        _header_line("Date", email.utils.formatdate(now if now is not None else time.time())),
        _header_line("Message-ID", make_message_id(fqdn)),
        "MIME-Version: 1.0\r\n",
    ]
    for name, value in headers:
        lines.append(_header_line(name, _clean(value)))
    lines.append('Content-Type: text/plain; charset="utf-8"\r\n')
    lines.append(f"Content-Transfer-Encoding: {cte}\r\n")
    # Only a non-ASCII address (SMTPUTF8) leaves UTF-8 in the header block.
    return "".join(lines).encode("utf-8") + b"\r\n" + data
