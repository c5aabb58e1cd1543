"""
Tests for trackermail.vendor.base (loading vendors, reading messages safely)
and trackermail.vendor.generic.
"""

from email.message import Message

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.vendor import fixture, parse
from trackermail.errors import ConfigError
from trackermail.message import (
    body_text,
    has_header,
    header,
    header_values,
    parse_address,
    sender_name,
)
from trackermail.vendor import load_vendor as exported_load_vendor
from trackermail.vendor.base import IVendor, load_vendor
from trackermail.vendor.debian import DebianVendor
from trackermail.vendor.generic import GenericVendor


class LoadVendorTests(SynchronousTestCase):
    def test_generic(self):
        """
        C{[tracker] vendor = "generic"} selects the vendor without rules.
        """
        vendor = load_vendor("generic")
        self.assertIsInstance(vendor, GenericVendor)
        self.assertEqual(vendor.name, "generic")

    def test_debian(self):
        """
        C{[tracker] vendor = "debian"} selects Debian's rules.
        """
        vendor = load_vendor("debian")
        self.assertIsInstance(vendor, DebianVendor)
        self.assertEqual(vendor.name, "debian")

    def test_unknown(self):
        """
        An unknown vendor name is a configuration error naming the key and
        the known vendors.
        """
        error = self.assertRaises(ConfigError, load_vendor, "ubuntu")
        self.assertEqual(
            str(error),
            "[tracker] vendor: unknown vendor 'ubuntu' (known: debian, generic)",
        )

    def test_no_module_lookup(self):
        """
        A module path is not a vendor name: configuration cannot import
        arbitrary modules.
        """
        self.assertRaises(ConfigError, load_vendor, "trackermail.vendor.debian")
        self.assertRaises(ConfigError, load_vendor, "os")

    def test_exported(self):
        """
        C{trackermail.vendor.load_vendor} is the same function.
        """
        self.assertIs(exported_load_vendor, load_vendor)

    def test_interface(self):
        """
        Both vendors provide L{IVendor}.
        """
        self.assertTrue(verifyObject(IVendor, load_vendor("generic")))
        self.assertTrue(verifyObject(IVendor, load_vendor("debian")))


class GenericVendorTests(SynchronousTestCase):
    def setUp(self):
        self.vendor = load_vendor("generic")

    def test_classify_keeps_suggestion(self):
        """
        The generic vendor keeps the package and keyword it was given.
        """
        msg = fixture("debbugs-report.eml")
        self.assertEqual(self.vendor.classify(msg, "hello", "bts"), (("hello",), "bts"))

    def test_classify_no_package(self):
        """
        Without a suggestion the generic vendor finds no package, even for
        mail Debian's rules would recognise.
        """
        msg = fixture("debbugs-report.eml")
        self.assertEqual(self.vendor.classify(msg, None, None), ((), None))

    def test_no_default_approval(self):
        """
        The generic vendor approves no default mail by itself.
        """
        self.assertFalse(self.vendor.approve_default(fixture("bugzilla.eml")))

    def test_no_extra_headers(self):
        """
        The generic vendor adds no headers.
        """
        msg = fixture("person.eml")
        self.assertEqual(self.vendor.extra_headers(msg, "hello", "contact", None), [])

    def test_no_news(self):
        """
        The generic vendor makes no news.
        """
        msg = fixture("dak-accepted-source.eml")
        self.assertEqual(self.vendor.news(msg, ("hello",), "upload-source"), [])


class _ExplodingHeaders(Message):
    """
    A message whose parsed header access raises, as some malformed headers
    do with C{email.policy.default}.
    """

    def get_all(self, name, failobj=None):
        raise IndexError("malformed header")

    def __contains__(self, name):
        raise ValueError("malformed header")


class HeaderHelperTests(SynchronousTestCase):
    def test_values_decoded(self):
        """
        Header values come back decoded from RFC 2047 and unfolded.
        """
        msg = fixture("dkim-signed.eml")
        self.assertEqual(header(msg, "Subject"), "problème with hello")
        self.assertEqual(header_values(msg, "X-Nothing"), [])
        self.assertEqual(header(msg, "X-Nothing", "dflt"), "dflt")

    def test_all_values(self):
        """
        Every occurrence of a repeated header is returned, in order.
        """
        msg = fixture("debbugs-report.eml")
        self.assertEqual(
            header_values(msg, "X-Loop"),
            ["owner@bugs.debian.org", "owner@bugs.debian.org"],
        )

    def test_eight_bit_header(self):
        """
        Raw 8-bit bytes in a header become text (U+FFFD where not UTF-8),
        never surrogates.
        """
        msg = parse(b"Subject: caf\xc3\xa9 \xff\xfe\n\nbody\n")
        value = header(msg, "Subject")
        value.encode("utf-8")
        self.assertTrue(value.startswith("caf"))

    def test_parse_failure_falls_back_to_raw(self):
        """
        When the header parser raises, the raw value is used, RFC 2047
        decoded and unfolded.
        """
        msg = _ExplodingHeaders()
        msg._headers = [
            ("Subject", "=?utf-8?q?probl=C3=A8me?=\n with folding"),
            ("To", "x@example.org"),
        ]
        self.assertEqual(header_values(msg, "subject"), ["problème with folding"])
        self.assertFalse(has_header(msg, "Subject"))

    def test_sender_name(self):
        """
        The sender is the From display name, else its address, else empty.
        """
        self.assertEqual(sender_name(fixture("dak-rm.eml")), "Debian FTP Masters")
        self.assertEqual(sender_name(parse(b"From: a@example.org\n\n")), "a@example.org")
        self.assertEqual(sender_name(parse(b"To: a@example.org\n\n")), "")

    def test_broken_from(self):
        """
        A From header that is no address at all still gives a name, without
        raising.
        """
        msg = fixture("broken-mime.eml")
        self.assertIsInstance(sender_name(msg), str)
        self.assertEqual(parse_address(""), ("", ""))


class BodyTextTests(SynchronousTestCase):
    def test_plain(self):
        """
        A plain text body is returned decoded.
        """
        msg = fixture("dak-accepted-source.eml")
        self.assertIn("Changed-By: Jérôme Développeur", body_text(msg))

    def test_multipart_text_parts_only(self):
        """
        Only text parts are read: their transfer encoding is undone, other
        attachments are skipped.
        """
        raw = (
            b"Content-Type: multipart/mixed; boundary=XX\n\n"
            b"--XX\nContent-Type: text/plain; charset=utf-8\n"
            b"Content-Transfer-Encoding: quoted-printable\n\ncaf=C3=A9\n"
            b"--XX\nContent-Type: application/octet-stream\n"
            b"Content-Transfer-Encoding: base64\n\naGVsbG8uZHNj\n"
            b"--XX--\n"
        )
        text = body_text(parse(raw))
        self.assertIn("café", text)
        self.assertNotIn("hello.dsc", text)

    def test_limit(self):
        """
        At most C{limit} characters are returned.
        """
        msg = parse(b"Content-Type: text/plain\n\n" + b"x" * 1000 + b"\n")
        self.assertEqual(len(body_text(msg, limit=100)), 100)

    def test_base64_text(self):
        """
        A base64 text part is decoded.
        """
        msg = parse(
            b"Content-Type: text/plain; charset=utf-8\n"
            b"Content-Transfer-Encoding: base64\n\nY2Fmw6kK\n"
        )
        self.assertEqual(body_text(msg), "café\n")

    def test_eight_bit_charset(self):
        """
        An 8-bit body is decoded with its declared charset.
        """
        msg = parse(
            b"Content-Type: text/plain; charset=iso-8859-1\n"
            b"Content-Transfer-Encoding: 8bit\n\ncaf\xe9\n"
        )
        self.assertEqual(body_text(msg), "café\n")

    def test_large_base64_part(self):
        """
        Of a 20 MiB base64 text part only the start is decoded, up to the
        limit.
        """
        import base64

        data = base64.encodebytes(b"0123456789" * (2 * 1024 * 1024))
        msg = parse(
            b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n" + data
        )
        text = body_text(msg, limit=1000)
        self.assertEqual(text, "0123456789" * 100)

    def test_broken_mime(self):
        """
        Invalid base64, an unknown charset and a bad boundary give some text,
        not an exception.
        """
        self.assertIsInstance(body_text(fixture("broken-mime.eml")), str)

    def test_unknown_charset(self):
        """
        A part in an unknown charset is read as UTF-8 with replacement.
        """
        msg = parse(b"Content-Type: text/plain; charset=klingon\n\nqapla\xff\n")
        self.assertEqual(body_text(msg), "qapla\ufffd\n")
