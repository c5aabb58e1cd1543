"""
Tests of L{trackermail.ingress.stamping}: DATA decoded as it streams in,
and our trace header on top.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from trackermail.ingress.stamping import DataDecoder, Stamper

FQDN = "tracker.example.org"


def decode(chunks) -> tuple[bytes, bytes | None]:
    decoder = DataDecoder()
    out = []
    rest = None
    chunks = list(chunks)
    for i, chunk in enumerate(chunks):
        data, rest = decoder.feed(chunk)
        out.append(data)
        if rest is not None:
            # What followed the end belongs to the session, not the message.
            rest += b"".join(chunks[i + 1:])
            break
    return b"".join(out), rest


WIRE = (b"Subject: x\r\n\r\n..leading dot\r\n..\r\nnot the end\r\n"
        b"bare\n.\nlf dots\r\nlast\r\n.\r\nNOOP\r\n")
STORED = b"Subject: x\n\n.leading dot\n.\nnot the end\nbare\n.\nlf dots\nlast\n"


class DataDecoderTests(SynchronousTestCase):
    def test_whole(self):
        """Dots are unstuffed, CRLF becomes LF, and the bytes after the end are handed back."""
        self.assertEqual(decode([WIRE]), (STORED, b"NOOP\r\n"))

    def test_every_split_point(self):
        """Splitting the input at any byte gives the same message and rest."""
        for i in range(len(WIRE) + 1):
            self.assertEqual(decode([WIRE[:i], WIRE[i:]]), (STORED, b"NOOP\r\n"), i)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(min_value=1, max_value=40), max_size=40))
    def test_any_chunking(self, sizes):
        """Any chunking of the input decodes the same."""
        chunks, pos = [], 0
        for size in sizes:
            chunks.append(WIRE[pos:pos + size])
            pos += size
        chunks.append(WIRE[pos:])
        self.assertEqual(decode(chunks), (STORED, b"NOOP\r\n"))

    def test_empty_message(self):
        """A dot right after DATA is an empty message."""
        self.assertEqual(decode([b".\r\nQUIT\r\n"]), (b"", b"QUIT\r\n"))

    def test_first_line_dot(self):
        """A stuffed dot on the very first line is unstuffed."""
        self.assertEqual(decode([b"..x\r\n.\r\n"]), (b".x\n", b""))

    def test_not_ended(self):
        """Without the terminator nothing is handed back as rest."""
        data, rest = decode([b"Subject: x\r\n\r\nbody\r\n."])
        self.assertIsNone(rest)
        self.assertEqual(data, b"Subject: x\n\nbody")

    def test_wire_bytes_counted(self):
        """The decoder counts the wire bytes of the message, not what followed it."""
        decoder = DataDecoder()
        decoder.feed(b"abc\r\n.\r\nNOOP\r\n")
        self.assertEqual(decoder.wire_bytes, len(b"abc\r\n.\r\n"))


class StamperTests(SynchronousTestCase):
    def stamp(self, *pieces: bytes, queue_id: str = "Q1") -> bytes:
        stamper = Stamper(b"Received: by us\n", FQDN, queue_id)
        return b"".join(stamper.feed(p) for p in pieces) + stamper.finish()

    def test_message_id_kept(self):
        """A message with a Message-ID gets only our Received: line on top."""
        self.assertEqual(self.stamp(b"Message-Id: <a@b>\nSubject: x\n\nbody\n"),
                         b"Received: by us\nMessage-Id: <a@b>\nSubject: x\n\nbody\n")

    def test_message_id_added(self):
        """A message without one gets <QUEUEID@FQDN>."""
        self.assertEqual(self.stamp(b"Subject: x\n", b"\nbody\n"),
                         b"Received: by us\nMessage-ID: <Q1@tracker.example.org>\n"
                         b"Subject: x\n\nbody\n")

    def test_message_id_in_body_is_not_the_header(self):
        """A Message-ID line in the body does not count."""
        out = self.stamp(b"Subject: x\n\nMessage-ID: <in@body>\n")
        self.assertIn(b"Message-ID: <Q1@", out)

    def test_headerless(self):
        """Text without headers is kept in the body, behind a blank line."""
        self.assertEqual(self.stamp(b"just text\n"),
                         b"Received: by us\nMessage-ID: <Q1@tracker.example.org>\n\njust text\n")

    def test_huge_header_block(self):
        """A header block bigger than the look-ahead is decided on what was seen."""
        out = self.stamp(b"X-A: " + b"a" * 70_000 + b"\n", b"Subject: x\n\nbody\n")
        self.assertTrue(out.endswith(b"Subject: x\n\nbody\n"))
        self.assertEqual(out.count(b"Received: by us"), 1)
