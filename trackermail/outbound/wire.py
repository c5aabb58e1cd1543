# -*- test-case-name: tests.outbound.test_wire -*-
"""
What goes on the wire, apart from the session logic: DATA content (line
endings, dot-stuffing, parts), envelope addresses, reply text.

Twisted's C{ESMTPClient} turns CRLF into CR CR LF and dot-stuffs per 16 KiB
chunk (see TWISTED-NOTES (b)). Here line endings are normalised once and
each part is dot-stuffed as a whole, so there are no chunk boundaries to get
wrong: a part always starts at a line boundary (the outbox stores a body's
chunks split after a line end).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Optional, Sequence

_BAD_ADDRESS = re.compile(r"[\x00-\x1f\x7f<>]")


def _encode_part(data: bytes) -> bytes:
    """
    One part of a message as DATA content, without the final "." line:
    every line ending (CRLF, LF or a bare CR, which SMTP does not allow)
    becomes CRLF, lines starting with "." get another ".", and the part ends
    with CRLF. A part always starts at the beginning of a line.
    """
    crlf = data.count(b"\r\n")
    if crlf != data.count(b"\r") or crlf != data.count(b"\n"):
        if crlf or b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        data = data.replace(b"\n", b"\r\n")
    if data[:1] == b".":
        data = b"." + data
    if b"\n." in data:
        data = data.replace(b"\r\n.", b"\r\n..")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


class _EncodeCache:
    """
    Encoded large parts by identity: a fan-out hands the same stored body
    chunks to every copy (behind a per-copy header prefix), so a body is
    encoded once, not once per copy. Bounded by the encoded bytes it keeps;
    each entry keeps its source alive, so an id cannot be reused while it is
    cached.
    """

    min_size = 4096

    def __init__(self, max_bytes: int = 32 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._items: "OrderedDict[int, tuple[bytes, bytes, bool]]" = OrderedDict()
        self._bytes = 0

    def encode(self, part: bytes) -> tuple[bytes, bool]:
        if len(part) < self.min_size:
            encoded = _encode_part(part)
            return encoded, encoded.isascii()
        key = id(part)
        hit = self._items.get(key)
        if hit is not None and hit[0] is part:
            self._items.move_to_end(key)
            return hit[1], hit[2]
        encoded = _encode_part(part)
        ascii_only = encoded.isascii()
        if len(encoded) <= self.max_bytes:
            if hit is not None:
                self._bytes -= len(hit[1])
            self._items[key] = (part, encoded, ascii_only)
            self._bytes += len(encoded)
            while self._bytes > self.max_bytes:
                _, (_, old, _) = self._items.popitem(last=False)
                self._bytes -= len(old)
        return encoded, ascii_only


_cache = _EncodeCache()


def encode_chunks(data) -> tuple[list[bytes], int, bool]:
    """
    DATA content of C{data} (bytes, or a sequence of parts each starting at
    a line boundary, e.g. header prefix + shared body chunks) as a list of
    chunks ending with the "." line, the content size (without it), and
    whether it is all ASCII. Dot-stuffing is done on whole parts, so it
    holds wherever the transport later splits the bytes.
    """
    parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    chunks = []
    size = 0
    ascii_only = True
    encode = _cache.encode
    for part in parts:
        if not part:
            continue
        encoded, is_ascii = encode(part if isinstance(part, bytes) else bytes(part))
        chunks.append(encoded)
        size += len(encoded)
        ascii_only = ascii_only and is_ascii
    chunks.append(b".\r\n")
    return chunks, size, ascii_only


def encode_data(data) -> bytes:
    """
    C{data} as DATA content ending with CRLF "." CRLF, in one piece.
    """
    return b"".join(encode_chunks(data)[0])


def encode_address(address: str, utf8: bool) -> Optional[bytes]:
    """
    C{address} for MAIL FROM / RCPT TO, or None when it cannot be sent:
    control characters or angle brackets, or non-ASCII to a server without
    SMTPUTF8.
    """
    if _BAD_ADDRESS.search(address):
        return None
    if not address.isascii() and not utf8:
        return None
    return address.encode("utf-8")


def bad_address_text(address: str, status: str, utf8: bool, peer: str) -> tuple[int, str]:
    """(code, text) for an address L{encode_address} refused."""
    if not _BAD_ADDRESS.search(address) and not address.isascii() and not utf8:
        return 553, "5.6.7 non-ASCII address and {} does not offer SMTPUTF8".format(peer)
    return 501, "{} bad address syntax".format(status)


def reply_text(lines: Sequence[bytes]) -> str:
    """The lines of a (multi-line) reply as one line of text."""
    return " ".join(line.decode("utf-8", "replace") for line in lines).strip()
