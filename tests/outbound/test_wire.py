"""
Tests for L{trackermail.outbound.wire}: DATA content (line endings,
dot-stuffing, parts) and the encode cache shared by a fan-out.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from trackermail.outbound import wire
from trackermail.outbound.wire import (
    bad_address_text,
    encode_address,
    encode_chunks,
    encode_data,
    reply_text,
)


def decode_data(content: bytes) -> bytes:
    """
    What a server makes of DATA content: unstuff up to the first lone ".".
    """
    out = []
    lines = content.split(b"\r\n")
    for i, line in enumerate(lines):
        if line == b".":
            assert lines[i + 1:] == [b""], "data continues after the final dot"
            return b"".join(line + b"\r\n" for line in out)
        out.append(line[1:] if line.startswith(b".") else line)
    raise AssertionError("no final dot")


def normalise(data: bytes) -> bytes:
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def body_with_dot_at(offset: int) -> bytes:
    """
    A message whose lone "." line starts exactly at C{offset}.
    """
    full, rest = divmod(offset, 80)
    if rest == 1:
        full, rest = full - 1, 81
    lines = [b"%078d\r\n" % i for i in range(full)]
    if rest:
        lines.append(b"y" * (rest - 2) + b"\r\n")
    return b"".join(lines) + b".\r\nafter the dot\r\n..two dots\r\n"

class EncodeDataTests(SynchronousTestCase):
    def test_lf_becomes_crlf(self):
        """Bare LF line endings go out as CRLF."""
        self.assertEqual(encode_data(b"a\nb\n"), b"a\r\nb\r\n.\r\n")

    def test_crlf_is_not_doubled(self):
        """CRLF input is sent as CRLF, never CR CR LF."""
        self.assertEqual(encode_data(b"a\r\nb\r\n"), b"a\r\nb\r\n.\r\n")

    def test_bare_cr_becomes_line_end(self):
        """A bare CR (not allowed in SMTP) becomes a line end, so no smuggled end of data."""
        self.assertEqual(encode_data(b"a\r.\rb"), b"a\r\n..\r\nb\r\n.\r\n")

    def test_dot_lines_are_stuffed(self):
        """Lines starting with a dot, the first one included, get another dot."""
        self.assertEqual(encode_data(b".a\n.\n..b\nc.\n"), b"..a\r\n..\r\n...b\r\nc.\r\n.\r\n")

    def test_missing_final_newline_is_added(self):
        """A message without a final newline still ends with CRLF.CRLF."""
        self.assertEqual(encode_data(b"abc"), b"abc\r\n.\r\n")

    def test_empty_message(self):
        """An empty message is just the final dot."""
        self.assertEqual(encode_data(b""), b".\r\n")

    def test_eight_bit_bytes_are_kept(self):
        """8-bit and undecodable bytes pass unchanged."""
        self.assertEqual(encode_data(b"\xff\xe9\x00\n"), b"\xff\xe9\x00\r\n.\r\n")

    def test_dot_line_at_every_offset_around_16k(self):
        """A lone "." line anywhere around a 16 KiB boundary is stuffed, never ends DATA early."""
        for offset in range(16384 - 40, 16384 + 41):
            body = body_with_dot_at(offset)
            self.assertEqual(body[offset:offset + 3], b".\r\n")
            self.assertEqual(decode_data(encode_data(body)), body, offset)

    def test_one_mebibyte_body(self):
        """A 1 MiB body with dot lines survives encoding and decoding byte for byte."""
        lines = []
        for i in range(40000):
            lines.append(b"." if i % 997 == 0 else b".leading dot %d" % i if i % 13 == 0
                         else b"plain line %d" % i)
        body = b"\n".join(lines)[: 1024 * 1024]
        self.assertEqual(decode_data(encode_data(body)), normalise(body))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def test_round_trip(self, data):
        """Any bytes come out of a server's unstuffing as the CRLF-normalised input."""
        self.assertEqual(decode_data(encode_data(data)), normalise(data))

class EncodePartsTests(SynchronousTestCase):
    def test_parts_are_encoded_like_the_whole(self):
        """A (prefix, body) message is encoded exactly like prefix + body."""
        prefix = b"X-Loop: dispatch@t.example\n"
        body = b".starts with a dot\r\nline\n.\n" + b"x" * 8000 + b"\n"
        chunks, size, ascii_only = encode_chunks((prefix, body))
        self.assertEqual(b"".join(chunks), encode_data(prefix + body))
        self.assertEqual(size, len(encode_data(prefix + body)) - 3)
        self.assertTrue(ascii_only)

    def test_body_chunks_split_after_line_ends(self):
        """A body stored as chunks split after line ends is encoded like the whole body."""
        body = b"".join(b".line %d\n" % i if i % 7 == 0 else b"line %d\r\n" % i
                        for i in range(5000))
        cuts = [0]
        while cuts[-1] < len(body):
            cuts.append(min(len(body), body.rfind(b"\n", 0, cuts[-1] + 4096) + 1))
        parts = [b"A: 1\n"] + [body[a:b] for a, b in zip(cuts, cuts[1:])]
        self.assertGreater(len(parts), 5)
        chunks, size, _ = encode_chunks(parts)
        self.assertEqual(b"".join(chunks), encode_data(b"A: 1\n" + body))
        self.assertEqual(decode_data(b"".join(chunks)), normalise(b"A: 1\n" + body))

    def test_eight_bit_part_is_not_ascii(self):
        """One 8-bit part makes the whole message non-ASCII (for BODY=8BITMIME)."""
        _, _, ascii_only = encode_chunks((b"A: 1\n", b"plain\n", b"caf\xc3\xa9\n"))
        self.assertFalse(ascii_only)

    def test_shared_body_is_encoded_once(self):
        """The same large body object is encoded once and reused for every copy."""
        body = b"line\n" * 4000
        first, _, _ = encode_chunks((b"A: 1\n", body))
        second, _, _ = encode_chunks((b"A: 2\n", body))
        self.assertIs(first[1], second[1])
        self.assertEqual(second[0], b"A: 2\r\n")

    def test_encode_cache_is_bounded_by_bytes(self):
        """The encode cache keeps no more encoded bytes than its limit, oldest out first."""
        cache = wire._EncodeCache(max_bytes=3 * 10240)
        parts = [bytes([65 + i]) * 10000 + b"\n" for i in range(5)]
        encoded = [cache.encode(p)[0] for p in parts]
        self.assertLessEqual(cache._bytes, 3 * 10240)
        self.assertEqual(len(cache._items), 3)
        self.assertIs(cache.encode(parts[4])[0], encoded[4])
        self.assertIsNot(cache.encode(parts[0])[0], encoded[0])
        self.assertEqual(cache.encode(parts[0])[0], encoded[0])

    def test_part_larger_than_the_cache_is_encoded_but_not_kept(self):
        """A part bigger than the whole cache is encoded every time and never evicts the rest."""
        cache = wire._EncodeCache(max_bytes=8192)
        small = b"s" * 5000 + b"\n"
        kept = cache.encode(small)[0]
        big = b"b" * 20000 + b"\n"
        self.assertEqual(cache.encode(big)[0], big[:-1] + b"\r\n")
        self.assertIs(cache.encode(small)[0], kept)


class AddressTests(SynchronousTestCase):
    def test_plain_address(self):
        """An ASCII address is sent as it is."""
        self.assertEqual(encode_address("a@x.example", utf8=False), b"a@x.example")

    def test_smuggled_command_is_refused(self):
        """Line breaks and angle brackets make an address unsendable (501 5.1.3)."""
        for bad in ("a@x\r\nRCPT TO:<e@x>", "<a@x>", "a\x00@x"):
            self.assertIsNone(encode_address(bad, utf8=True), bad)
        self.assertEqual(bad_address_text("<a@x>", "5.1.3", True, "mx"),
                         (501, "5.1.3 bad address syntax"))

    def test_non_ascii_needs_smtputf8(self):
        """A UTF-8 address goes only to a server offering SMTPUTF8; otherwise 553 5.6.7."""
        self.assertIsNone(encode_address("j\xf6rg@x", utf8=False))
        self.assertEqual(encode_address("j\xf6rg@x", utf8=True), "j\xf6rg@x".encode())
        code, text = bad_address_text("j\xf6rg@x", "5.1.3", False, "mx:25")
        self.assertEqual((code, text[:5]), (553, "5.6.7"))
        self.assertIn("mx:25", text)

    def test_reply_text_joins_lines(self):
        """A multi-line reply reads as one line; undecodable bytes do not break it."""
        self.assertEqual(reply_text([b"5.1.1 first", b"second \xff"]),
                         "5.1.1 first second \ufffd")
