# -*- test-case-name: tests.ingress.test_stamping -*-
"""
Turning SMTP DATA into the stored message, a piece at a time.

L{DataDecoder} undoes the wire form as bytes arrive: it finds the
terminating C{CRLF.CRLF} (only that: a bare-LF dot is not an end, which
closes the SMTP smuggling trick), removes dot-stuffing and turns CRLF into
LF, with C{bytes} operations over whole chunks rather than a loop per line.
L{Stamper} puts our C{Received:} line on top, and a C{Message-ID} when the
message has none, deciding once it has seen the header block (or enough
of it).
"""

from __future__ import annotations

import re
from email.utils import formatdate
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address

_END = b"\r\n.\r\n"
# Suffixes of a chunk that may be the start of the terminator, longest first.
_END_PREFIXES = (_END[:4], _END[:3], _END[:2], _END[:1])
_HEADER_LINE_RE = re.compile(rb"^[!-9;-~]+:")
_MESSAGE_ID_LINE = re.compile(rb"^Message-ID[ \t]*:[ \t]*([^\r\n]*)", re.I | re.M)
#: The most of a message's start looked at for its header block.
HEAD_LIMIT = 64 * 1024


class DataDecoder:
    """
    The message data of one DATA command, from the wire form to the
    stored form (LF lines, no dot-stuffing).

    C{feed(data)} returns C{(decoded, rest)}: the decoded bytes of C{data}
    that can be released now, and C{None} while the terminator has not
    come, or the bytes that followed it (pipelined commands) once it has.
    """

    def __init__(self):
        # A CRLF sentinel makes a terminator right after DATA, and a dot on
        # the first line, look like every other line.
        self._tail = b"\r\n"
        self._first = True
        self.done = False
        self.wire_bytes = 0

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        if self.done:
            return b"", data
        s = self._tail + data
        end = s.find(_END)
        if end >= 0:
            body, rest = s[: end + 2], s[end + 5:]
            self._tail = b""
            self.done = True
            self.wire_bytes += len(data) - len(rest)
        else:
            keep = next((len(p) for p in _END_PREFIXES if s.endswith(p)), 0)
            body, self._tail = s[: len(s) - keep], s[len(s) - keep:]
            rest = None
            self.wire_bytes += len(data)
        out = body.replace(b"\r\n.", b"\r\n").replace(b"\r\n", b"\n")
        if self._first and out:
            out = out[1:]  # the sentinel's line break
            self._first = False
        return out, rest


_UNPRINTABLE = re.compile(rb"[^!-'*-\[\]-~]")


def printable(value: bytes, limit: int = 255) -> str:
    """Text safe for a header comment: printable ASCII, no parentheses or backslashes."""
    return _UNPRINTABLE.sub(b"?", value[:limit]).decode("ascii") or "unknown"


def peer_description(address: Any) -> tuple[bytes, str]:
    """
    (bytes for the HELO reply, text for the Received: line) of a peer;
    UNIX socket peers have no C{host}.
    """
    if isinstance(address, (IPv4Address, IPv6Address)):
        host = address.host
        return host.encode("ascii"), f"[{host}]"
    host = getattr(address, "host", None)
    if isinstance(host, str):
        return host.encode("ascii", "replace"), f"[{host}]"
    return b"localhost", "local socket"


def received_line(*, helo: bytes | None, peer: str, fqdn: str, protocol: str,
                  queue_id: str, recipients: list[str], when: float) -> bytes:
    """Our C{Received:} trace field (RFC 5321 4.4), LF-terminated."""
    for_ = f"\n\tfor <{recipients[0]}>" if len(recipients) == 1 else ""
    text = (
        f"Received: from {printable(helo or b'unknown')} ({peer})\n"
        f"\tby {fqdn} (trackermail) with {protocol} id {queue_id}{for_};\n"
        f"\t{formatdate(when)}\n"
    )
    return text.encode("ascii", "replace")


class Stamper:
    """
    Prepends our trace header (and a C{Message-ID} when missing) to a
    decoded message stream. C{feed} returns what may be written now;
    C{finish} what is left at the end.
    """

    def __init__(self, received: bytes, fqdn: str, queue_id: str):
        self._received = received
        # The queue id is unique across processes, restarts and nodes.
        self._message_id = f"Message-ID: <{queue_id}@{fqdn}>\n".encode("ascii", "replace")
        self._head = bytearray()
        self._decided = False
        self.added_message_id = False
        #: The message's Message-ID (the one we added, if any), for logs.
        self.message_id = ""

    def feed(self, data: bytes) -> bytes:
        if self._decided:
            return data
        self._head += data
        if len(self._head) < HEAD_LIMIT and self._head.find(b"\n\n") < 0:
            return b""
        return self._decide()

    def finish(self) -> bytes:
        return b"" if self._decided else self._decide()

    def _decide(self) -> bytes:
        self._decided = True
        head = bytes(self._head)
        self._head = bytearray()
        has_headers = bool(_HEADER_LINE_RE.match(head))
        end = head.find(b"\n\n")
        block = head[: end if end >= 0 else len(head)] if has_headers else b""
        prefix = self._received
        match = _MESSAGE_ID_LINE.search(block)
        if match is None:
            prefix += self._message_id
            self.added_message_id = True
            self.message_id = self._message_id[len(b"Message-ID: "):].strip().decode("ascii")
        else:
            self.message_id = printable(match.group(1).strip(), 200)
        if not has_headers:
            # Body text must not be read as a continuation of our headers.
            prefix += b"\n"
        return prefix + head
