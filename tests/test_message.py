"""
Tests for L{trackermail.message}: reading any mail without raising, and
building the tracker's own mails.
"""

from __future__ import annotations

import email
import email.policy

from twisted.trial.unittest import SynchronousTestCase

from trackermail.message import (
    UnparsableMessage,
    address_of,
    body_text,
    build_mail,
    has_header,
    header,
    header_address,
    header_values,
    parse_message,
    plain_text,
)


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


class HeaderTests(SynchronousTestCase):
    def test_value_decoded_and_unfolded(self):
        """An RFC 2047 value folded over two lines reads as one line of text."""
        msg = parse(b"Subject: =?utf-8?q?caf=C3=A9?=\r\n and more\r\n\r\nbody\r\n")
        self.assertEqual(header(msg, "Subject"), "caf\u00e9 and more")

    def test_missing_gives_default(self):
        """An absent header gives the default; has_header says so too."""
        msg = parse(b"From: a@example.org\r\n\r\n")
        self.assertEqual(header(msg, "Subject", "none"), "none")
        self.assertFalse(has_header(msg, "Subject"))
        self.assertTrue(has_header(msg, "from"))

    def test_undecodable_bytes(self):
        """Raw 8-bit bytes in a header become text, never an exception."""
        msg = parse(b"Subject: caf\xe9 \xff\r\nX-Loop: a\r\nX-Loop: b\r\n\r\n")
        self.assertIn("caf", header(msg, "Subject"))
        self.assertEqual(header_values(msg, "X-Loop"), ["a", "b"])

    def test_unstructured_headers_read_as_the_policy_reads_them(self):
        """
        Headers read from their raw value (all but addresses, dates and MIME
        headers) give the text the default policy's header objects give.
        """
        raw = (b"Subject: =?utf-8?q?caf=C3=A9?= =?utf-8?q?_au_lait?= ok\r\n"
               b"X-Debian-Package: =?iso-8859-1?q?p=E9?=\r\n"
               b"Message-ID: <a.b@example.org>\r\n"
               b"References: <x@example.org>\r\n <y@example.org>\r\n"
               b"X-Plain: just text\r\n\r\nbody\r\n")
        msg = parse(raw)
        for name in ("Subject", "X-Debian-Package", "Message-ID", "References", "X-Plain"):
            expected = [" ".join(str(v).split()) for v in msg.get_all(name)]
            self.assertEqual([" ".join(v.split()) for v in header_values(msg, name)],
                             expected, name)
        self.assertEqual(header(msg, "Subject"), "caf\u00e9 au lait ok")

    def test_header_address_same_as_parsed_header(self):
        """
        The address read from the raw From: is the one the policy's header
        object gives, for quoting, comments, folding, lists, 8-bit names
        and garbage; an encoded word in it takes the policy's way.
        """
        for value in (b"<<<@@@>>>", b"Foo Bar <a@b.org>", b'"Doe, John" <j@x.org>',
                      b"=?utf-8?q?Doe=2C_John?= <j@x.org>", b"a@b.org (comment)",
                      b"a@b.org, c@d.org", b"Jane\r\n <jane@x.org>", b"caf\xc3\xa9 <c@x.org>",
                      b"undisclosed-recipients:;", b"=?utf-8?b?w6k=?=@x.org", b"<>"):
            msg = parse(b"From: " + value + b"\r\n\r\n")
            self.assertEqual(header_address(msg, "From"),
                             address_of(header(msg, "From")), value)
        self.assertEqual(header_address(parse(b"To: a@b.org\r\n\r\n"), "From"), "")

    def test_malformed_address_header(self):
        """A From that is not an address yields no address, not an error."""
        msg = parse(b"From: <<<@@@>>>\r\n\r\n")
        self.assertEqual(address_of(header(msg, "From")), "")
        self.assertEqual(address_of("Jane <jane@example.org>"), "jane@example.org")


class BodyTests(SynchronousTestCase):
    def test_plain_text_charset(self):
        """The first text/plain part is decoded with its charset."""
        msg = parse(b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\ncaf\xe9\r\n")
        self.assertEqual(plain_text(msg).strip(), "caf\u00e9")

    def test_plain_text_unknown_charset(self):
        """An unknown charset is read as UTF-8, bad bytes as U+FFFD."""
        msg = parse(b"Content-Type: text/plain; charset=x-nonsense\r\n\r\nok \xff\r\n")
        self.assertEqual(plain_text(msg).strip(), "ok \ufffd")

    def test_no_plain_text(self):
        """A mail with only HTML has no plain text."""
        msg = parse(b"Content-Type: text/html\r\n\r\n<p>hi</p>\r\n")
        self.assertIsNone(plain_text(msg))

    def test_body_text_skips_attachments(self):
        """body_text joins the text parts and skips binary attachments."""
        raw = (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
               b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
               b"--b\r\nContent-Type: application/octet-stream\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b--\r\n")
        self.assertEqual(body_text(parse(raw)).strip(), "hello")

    def test_body_text_limit(self):
        """At most `limit` characters are returned, whatever the size."""
        msg = parse(b"Content-Type: text/plain\r\n\r\n" + b"x" * 10000)
        self.assertEqual(len(body_text(msg, limit=100)), 100)


class ParseTests(SynchronousTestCase):
    def test_empty_is_not_a_message(self):
        """Empty bytes are refused with a permanent error."""
        self.assertRaises(UnparsableMessage, parse_message, b"  \r\n")

    def test_broken_mime_parses(self):
        """Broken MIME parses (with defects) rather than raising."""
        msg = parse_message(b'Content-Type: multipart/mixed; boundary="x"\r\n\r\nno parts\r\n')
        self.assertEqual(msg.get_content_type(), "multipart/mixed")


class BuildTests(SynchronousTestCase):
    def test_no_header_injection(self):
        """CR and LF in values taken from received mail cannot add headers."""
        data = build_mail(fqdn="tracker.example.org", from_="control@tracker.example.org",
                          to="a@example.org", subject="Re: x\r\nBcc: victim@example.org",
                          body="hi", now=0)
        msg = parse(data)
        self.assertIsNone(msg["Bcc"])
        self.assertEqual(msg["Subject"], "Re: x Bcc: victim@example.org")

    def test_utf8_body(self):
        """A non-ASCII body is UTF-8 with an 8-bit transfer encoding."""
        data = build_mail(fqdn="tracker.example.org", from_="control@tracker.example.org",
                          to="a@example.org", subject="s", body="caf\u00e9\n", now=0)
        msg = parse(data)
        self.assertEqual(msg["Content-Transfer-Encoding"], "8bit")
        self.assertEqual(msg.get_content().strip(), "caf\u00e9")
        self.assertTrue(msg["Message-ID"].endswith("@tracker.example.org>"))

    def test_non_ascii_subject_and_names(self):
        """Non-ASCII subjects and display names are RFC 2047 encoded and read back intact."""
        data = build_mail(fqdn="tracker.example.org", from_="control@tracker.example.org",
                          to="J\u00fcrgen <j@example.org>", cc=["x@example.org"],
                          subject="Re: caf\u00e9 =?not-encoded?=", body="ok\n", now=0)
        self.assertTrue(data.split(b"\r\n\r\n")[0].isascii())
        msg = parse(data)
        self.assertEqual(msg["Subject"], "Re: caf\u00e9 =?not-encoded?=")
        self.assertEqual(msg["To"].addresses[0].display_name, "J\u00fcrgen")
        self.assertEqual(msg["Cc"], "x@example.org")

    def test_long_header_folded(self):
        """A long References field is folded into lines of reasonable length."""
        refs = " ".join(f"<{i}.{'x' * 40}@example.org>" for i in range(10))
        data = build_mail(fqdn="t.example.org", from_="control@t.example.org", to="a@example.org",
                          subject="s", body="b\n", headers=[("References", refs)], now=0)
        header_block = data.split(b"\r\n\r\n")[0]
        self.assertTrue(all(len(line) <= 998 for line in header_block.split(b"\r\n")))
        self.assertEqual(" ".join(parse(data)["References"].split()), refs)

    def test_very_long_body_line(self):
        """A body line over 998 bytes is sent quoted-printable, and reads back the same."""
        body = "y" * 3000 + "\n"
        data = build_mail(fqdn="t.example.org", from_="control@t.example.org", to="a@example.org",
                          subject="s", body=body, now=0)
        msg = parse(data)
        self.assertEqual(msg["Content-Transfer-Encoding"], "quoted-printable")
        self.assertEqual(msg.get_content().replace("\r\n", "\n"), body)
        self.assertTrue(all(len(line) <= 998 for line in data.split(b"\r\n")))
