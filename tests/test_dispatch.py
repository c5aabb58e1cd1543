"""
Tests for trackermail.dispatch: classification order, loop detection, the
headers of forwarded copies and byte-exact decoration.
"""


from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.vendor import fixture, fixture_bytes, parse
from trackermail.classify import (
    MAX_PACKAGES,
    Classification,
    classify,
    normalise_keyword,
    normalise_package,
)
from trackermail.dispatch import (
    decorate,
    forward_headers,
    has_dispatch_loop,
    header_prefix,
    line_ending,
)
from trackermail.vendor.base import IVendor, SkipMessage, load_vendor

FQDN = "tracker.debian.org"


@implementer(IVendor)
class ScriptedVendor:
    """
    A vendor that records what it was asked and answers as told.
    """

    name = "scripted"

    def __init__(self, result=None, error=None, approve=False):
        self.result = result
        self.error = error
        self.approve = approve
        self.calls = []

    def classify(self, msg, package, keyword):
        self.calls.append((package, keyword))
        if self.error is not None:
            raise self.error
        if self.result is None:
            return ((package,) if package else ()), keyword
        return self.result

    def approve_default(self, msg):
        if self.approve == "raise":
            raise RuntimeError("boom")
        return self.approve

    def extra_headers(self, msg, package, keyword, team):
        return []

    def news(self, msg, packages, keyword):
        return []


def _events(testcase):
    events = []
    globalLogPublisher.addObserver(events.append)
    testcase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


class ClassifyOrderTests(SynchronousTestCase):
    def test_address_first(self):
        """
        The address's package and keyword win over the X-Distro-Tracker
        headers.
        """
        vendor = ScriptedVendor()
        msg = fixture("tracker-headers.eml")
        result = classify(msg, vendor, "other", "contact")
        self.assertEqual(result, Classification(("other",), "contact", True))
        self.assertEqual(vendor.calls, [("other", "contact")])

    def test_headers_second(self):
        """
        Without an address package, X-Distro-Tracker-Package and
        X-Distro-Tracker-Keyword decide (an old keyword name mapped).
        """
        vendor = ScriptedVendor()
        result = classify(fixture("tracker-headers.eml"), vendor)
        self.assertEqual(result, Classification(("hello",), "translation", True))
        self.assertEqual(vendor.calls, [("hello", "translation")])

    def test_header_keyword_with_address_package(self):
        """
        An address naming only a package takes the keyword from
        X-Distro-Tracker-Keyword.
        """
        result = classify(fixture("tracker-headers.eml"), ScriptedVendor(), "other")
        self.assertEqual(result, Classification(("other",), "translation", True))

    def test_vendor_third(self):
        """
        The vendor's rules classify what the address and headers left open.
        """
        vendor = ScriptedVendor(result=(("hello",), "bts"))
        result = classify(fixture("person.eml"), vendor)
        self.assertEqual(result, Classification(("hello",), "bts", True))
        self.assertEqual(vendor.calls, [(None, None)])

    def test_default_last(self):
        """
        Mail nothing classifies has keyword default and is not approved.
        """
        result = classify(fixture("person.eml"), ScriptedVendor(), "hello")
        self.assertEqual(result, Classification(("hello",), "default", False))

    def test_no_package(self):
        """
        Mail nothing attributes to a package has no packages (and is dropped
        by the handler).
        """
        result = classify(fixture("person.eml"), load_vendor("debian"))
        self.assertEqual(result, Classification((), "default", False))

    def test_debian_rules(self):
        """
        With the Debian vendor, bug mail to dispatch@ is bts mail of its
        package.
        """
        result = classify(fixture("debbugs-report.eml"), load_vendor("debian"))
        self.assertEqual(result, Classification(("hello",), "bts", True))

    def test_debian_address_suggestion(self):
        """
        Bug mail to dispatch+PKG@ of another package stays with PKG.
        """
        result = classify(fixture("debbugs-multi.eml"), load_vendor("debian"), "baz")
        self.assertEqual(result, Classification(("baz",), "bts", True))


class KeywordTests(SynchronousTestCase):
    def test_legacy_keywords(self):
        """
        The old PTS keyword names are mapped to the new ones.
        """
        vendor = ScriptedVendor()
        msg = fixture("person.eml")
        for old, new in [
            ("katie-other", "archive"),
            ("buildd", "build"),
            ("ddtp", "translation"),
            ("cvs", "vcs"),
        ]:
            self.assertEqual(classify(msg, vendor, "hello", old).keyword, new)

    def test_legacy_keyword_from_vendor(self):
        """
        An old keyword name returned by a vendor is mapped too.
        """
        vendor = ScriptedVendor(result=(("hello",), "katie-other"))
        self.assertEqual(classify(fixture("person.eml"), vendor).keyword, "archive")

    def test_invalid_keyword_header_ignored(self):
        """
        A malformed X-Distro-Tracker-Keyword counts as absent.
        """
        raw = b"X-Distro-Tracker-Package: hello\nX-Distro-Tracker-Keyword: no such\n\nx\n"
        result = classify(parse(raw), ScriptedVendor())
        self.assertEqual(result, Classification(("hello",), "default", False))

    def test_keyword_case(self):
        """
        Keywords are case-insensitive.
        """
        self.assertEqual(normalise_keyword(" BTS-Control "), "bts-control")
        self.assertIsNone(normalise_keyword(""))
        self.assertIsNone(normalise_keyword(None))
        self.assertIsNone(normalise_keyword("x" * 65))


class ApprovalTests(SynchronousTestCase):
    def test_approved_header(self):
        """
        Default mail carrying X-Distro-Tracker-Approved is approved.
        """
        raw = b"X-Distro-Tracker-Approved: yes\n" + fixture_bytes("person.eml")
        result = classify(parse(raw), ScriptedVendor(), "hello")
        self.assertEqual(result, Classification(("hello",), "default", True))

    def test_vendor_approval(self):
        """
        The vendor may approve default mail (Debian: Bugzilla mail).
        """
        result = classify(fixture("bugzilla.eml"), load_vendor("debian"), "hello")
        self.assertEqual(result, Classification(("hello",), "default", True))

    def test_generic_no_approval(self):
        """
        The generic vendor approves no default mail.
        """
        result = classify(fixture("bugzilla.eml"), load_vendor("generic"), "hello")
        self.assertEqual(result, Classification(("hello",), "default", False))

    def test_vendor_approval_fails(self):
        """
        A vendor failing to decide approval leaves the mail unapproved and
        logs the failure.
        """
        result = classify(fixture("person.eml"), ScriptedVendor(approve="raise"), "hello")
        self.assertFalse(result.approved)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class VendorFailureTests(SynchronousTestCase):
    def test_skip(self):
        """
        SkipMessage raised by the vendor reaches the caller.
        """
        vendor = ScriptedVendor(error=SkipMessage())
        self.assertRaises(SkipMessage, classify, fixture("person.eml"), vendor, "hello")

    def test_vendor_bug(self):
        """
        A vendor raising anything else is logged, and the mail is classified
        as if the vendor had no rule for it.
        """
        vendor = ScriptedVendor(error=KeyError("oops"))
        result = classify(fixture("person.eml"), vendor, "hello", "contact")
        self.assertEqual(result, Classification(("hello",), "contact", True))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_vendor_returns_string(self):
        """
        A vendor returning a single name instead of a tuple still works.
        """
        vendor = ScriptedVendor(result=("hello", "bts"))
        self.assertEqual(classify(fixture("person.eml"), vendor).packages, ("hello",))

    def test_vendor_returns_none(self):
        """
        A vendor returning no packages at all gives an empty tuple.
        """
        vendor = ScriptedVendor(result=(None, None))
        self.assertEqual(classify(fixture("person.eml"), vendor).packages, ())


class PackageNameTests(SynchronousTestCase):
    def test_normalise(self):
        """
        Package names are lowercased and stripped; invalid names are refused.
        """
        self.assertEqual(normalise_package(" Hello "), "hello")
        self.assertEqual(normalise_package("g++-12"), "g++-12")
        self.assertEqual(normalise_package("ftp.debian.org"), "ftp.debian.org")
        for bad in ["", "-foo", "foo bar", "foo_bar", "foo/bar", "x" * 101, None, 3, "é"]:
            self.assertIsNone(normalise_package(bad), bad)

    def test_invalid_names_dropped(self):
        """
        Invalid package names from any source are dropped and logged;
        duplicates collapse.
        """
        events = _events(self)
        vendor = ScriptedVendor(result=(("hello", "../etc", "Hello", "x y", "bar"), "bts"))
        result = classify(fixture("person.eml"), vendor)
        self.assertEqual(result.packages, ("hello", "bar"))
        self.assertIn(2, [e.get("count") for e in events])

    def test_invalid_address_package(self):
        """
        An invalid package in the address counts as absent: the headers
        decide.
        """
        result = classify(fixture("tracker-headers.eml"), ScriptedVendor(), "bad name")
        self.assertEqual(result.packages, ("hello",))

    def test_five_thousand_packages(self):
        """
        A bug tracker mail naming 5,000 packages is forwarded for the first
        MAX_PACKAGES of them only, with a warning in the log.
        """
        events = _events(self)
        names = b" ".join(b"pkg%d" % i for i in range(5000))
        raw = fixture_bytes("debbugs-report.eml").replace(
            b"X-Debian-PR-Source: hello", b"X-Debian-PR-Source: " + names
        )
        result = classify(parse(raw), load_vendor("debian"))
        self.assertEqual(len(result.packages), MAX_PACKAGES)
        self.assertEqual(result.packages[:2], ("pkg0", "pkg1"))
        self.assertEqual(result.keyword, "bts")
        self.assertIn(MAX_PACKAGES, [e.get("limit") for e in events])


class BadInputTests(SynchronousTestCase):
    def test_broken_mime(self):
        """
        Broken MIME and 8-bit headers are classified without error.
        """
        result = classify(fixture("broken-mime.eml"), load_vendor("debian"))
        self.assertEqual(result, Classification(("hello",), "archive", True))

    def test_no_from_no_subject(self):
        """
        A message without From, Subject or Message-ID is classified like any
        other.
        """
        msg = parse(b"X-Debian: buildd.debian.org\nX-Debian-Package: hello\n\nlog\n")
        result = classify(msg, load_vendor("debian"))
        self.assertEqual(result, Classification(("hello",), "build", True))

    def test_empty_message(self):
        """
        An empty message has no package.
        """
        self.assertEqual(
            classify(parse(b""), load_vendor("debian")),
            Classification((), "default", False),
        )

    def test_large_accepted_upload(self):
        """
        A 20 MiB archive mail is classified by its first 4 MiB of text: a
        .dsc listed after that is not seen (upload-binary).
        """
        head = fixture_bytes("dak-accepted-binary.eml")
        raw = head + (b"x" * 79 + b"\n") * (20 * 1024 * 1024 // 80) + b" abc 1 hello_2.dsc\n"
        self.assertGreater(len(raw), 20 * 1024 * 1024)
        result = classify(parse(raw), load_vendor("debian"))
        self.assertEqual(result, Classification(("hello",), "upload-binary", True))

    def test_large_attachment(self):
        """
        A 20 MiB binary attachment is not decoded to look for a .dsc.
        """
        raw = (
            b"X-Debian: DAK\nX-Debian-Package: hello\n"
            b"Subject: Accepted hello 1.0-1 (source) into unstable\n"
            b"Content-Type: multipart/mixed; boundary=B\n\n"
            b"--B\nContent-Type: text/plain\n\nno files here\n"
            b"--B\nContent-Type: application/octet-stream\n"
            b"Content-Transfer-Encoding: base64\n\n"
            + b"aGVsbG9fMS4wLTEuZHNjCg==\n" * (20 * 1024 * 1024 // 25)
            + b"--B--\n"
        )
        result = classify(parse(raw), load_vendor("debian"))
        self.assertEqual(result.keyword, "upload-binary")


class LoopTests(SynchronousTestCase):
    def test_own_loop(self):
        """
        Mail that carries X-Loop: dispatch@FQDN was already forwarded by us.
        """
        self.assertTrue(has_dispatch_loop(fixture("forwarded-loop.eml"), FQDN))

    def test_other_loops(self):
        """
        Other X-Loop values (the bug tracker's, another tracker's) are no
        loop.
        """
        self.assertFalse(has_dispatch_loop(fixture("debbugs-report.eml"), FQDN))
        self.assertFalse(
            has_dispatch_loop(fixture("forwarded-loop.eml"), "tracker.example.org")
        )
        self.assertFalse(has_dispatch_loop(fixture("person.eml"), FQDN))

    def test_case_and_brackets(self):
        """
        The loop header is recognised whatever its case and brackets.
        """
        msg = parse(b"X-Loop: <Dispatch@Tracker.Debian.Org>\n\nx\n")
        self.assertTrue(has_dispatch_loop(msg, FQDN))

    def test_decorated_copy_loops(self):
        """
        A copy we forwarded, sent back to dispatch, is recognised as a loop.
        """
        raw = fixture_bytes("person.eml")
        copy = decorate(raw, forward_headers(FQDN, "hello", "contact"))
        self.assertTrue(has_dispatch_loop(parse(copy), FQDN))


class ForwardHeadersTests(SynchronousTestCase):
    def test_direct(self):
        """
        A direct subscriber's copy carries the loop, tracker, list and
        unsubscribe headers.
        """
        self.assertEqual(
            forward_headers(FQDN, "hello", "bts"),
            [
                ("X-Loop", "dispatch@tracker.debian.org"),
                ("X-Distro-Tracker-Package", "hello"),
                ("X-Distro-Tracker-Keyword", "bts"),
                ("List-Id", "<hello.tracker.debian.org>"),
                ("Precedence", "list"),
                (
                    "List-Unsubscribe",
                    "<mailto:control@tracker.debian.org?body=unsubscribe%20hello>",
                ),
            ],
        )

    def test_one_click(self):
        """
        With an unsubscribe URL, List-Unsubscribe offers it first and
        List-Unsubscribe-Post announces one-click unsubscription.
        """
        headers = forward_headers(
            FQDN, "hello", "bts", unsubscribe_url="https://tracker.debian.org/u/TOKEN"
        )
        self.assertEqual(
            headers[-2:],
            [
                (
                    "List-Unsubscribe",
                    "<https://tracker.debian.org/u/TOKEN>, "
                    "<mailto:control@tracker.debian.org?body=unsubscribe%20hello>",
                ),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ],
        )

    def test_team_copy(self):
        """
        A team member's copy carries X-Distro-Tracker-Team and no
        Precedence or List-Unsubscribe.
        """
        self.assertEqual(
            forward_headers(FQDN, "hello", "bts", team="perl", direct=False),
            [
                ("X-Loop", "dispatch@tracker.debian.org"),
                ("X-Distro-Tracker-Package", "hello"),
                ("X-Distro-Tracker-Keyword", "bts"),
                ("List-Id", "<hello.tracker.debian.org>"),
                ("X-Distro-Tracker-Team", "perl"),
            ],
        )

    def test_team_mail(self):
        """
        Mail to team+SLUG@ (no package) carries no package or list headers.
        """
        self.assertEqual(
            forward_headers(FQDN, None, "contact", team="perl", direct=False),
            [
                ("X-Loop", "dispatch@tracker.debian.org"),
                ("X-Distro-Tracker-Keyword", "contact"),
                ("X-Distro-Tracker-Team", "perl"),
            ],
        )

    def test_vendor_headers_last(self):
        """
        The vendor's headers come after ours.
        """
        vendor = load_vendor("debian")
        extra = vendor.extra_headers(fixture("person.eml"), "hello", "bts", None)
        headers = forward_headers(FQDN, "hello", "bts", vendor_headers=extra)
        self.assertEqual(headers[-4:], extra)
        self.assertEqual(headers[0], ("X-Loop", "dispatch@tracker.debian.org"))

    def test_unsubscribe_quoting(self):
        """
        Characters such as + in the package name are percent-encoded in the
        mailto URL.
        """
        headers = dict(forward_headers(FQDN, "g++-12", "bts"))
        self.assertEqual(
            headers["List-Unsubscribe"],
            "<mailto:control@tracker.debian.org?body=unsubscribe%20g%2B%2B-12>",
        )


class DecorateTests(SynchronousTestCase):
    def test_byte_for_byte(self):
        """
        The forwarded copy is the new headers followed by the original
        header block and body, byte for byte (DKIM survives).
        """
        raw = fixture_bytes("dkim-signed.eml")
        headers = forward_headers(FQDN, "hello", "contact")
        copy = decorate(raw, headers)
        prefix = header_prefix(raw, headers)
        self.assertEqual(copy, prefix + raw)
        self.assertEqual(copy[len(prefix):], raw)
        self.assertTrue(copy.endswith(b"Bonjour,   trailing spaces stay  \nand 8-bit bytes stay: \xc3\xa9 \xc3\xa0 \xc3\xbc\n"))

    def test_prefix_lines(self):
        """
        The prepended block is one line per header, in order.
        """
        raw = fixture_bytes("person.eml")
        prefix = header_prefix(raw, forward_headers(FQDN, "hello", "contact"))
        self.assertEqual(
            prefix,
            b"X-Loop: dispatch@tracker.debian.org\n"
            b"X-Distro-Tracker-Package: hello\n"
            b"X-Distro-Tracker-Keyword: contact\n"
            b"List-Id: <hello.tracker.debian.org>\n"
            b"Precedence: list\n"
            b"List-Unsubscribe: <mailto:control@tracker.debian.org?body=unsubscribe%20hello>\n",
        )

    def test_copy_parses(self):
        """
        The copy parses with our headers and all the original ones.
        """
        raw = fixture_bytes("dkim-signed.eml")
        msg = parse(decorate(raw, forward_headers(FQDN, "hello", "contact", team="perl")))
        self.assertEqual(msg["X-Distro-Tracker-Team"], "perl")
        self.assertEqual(msg["Subject"], "problème with hello")
        self.assertTrue(msg["DKIM-Signature"].startswith("v=1;"))

    def test_crlf(self):
        """
        A CRLF message gets CRLF header lines.
        """
        raw = fixture_bytes("person.eml").replace(b"\n", b"\r\n")
        copy = decorate(raw, [("X-A", "1"), ("X-B", "2")])
        self.assertEqual(copy, b"X-A: 1\r\nX-B: 2\r\n" + raw)

    def test_line_ending(self):
        """
        The line ending is the message's own; CRLF when it has none.
        """
        self.assertEqual(line_ending(b"A: b\nC: d\r\n"), b"\n")
        self.assertEqual(line_ending(b"A: b\r\n"), b"\r\n")
        self.assertEqual(line_ending(b"A: b"), b"\r\n")
        self.assertEqual(line_ending(b"\nbody"), b"\n")
        self.assertEqual(decorate(b"", [("X-A", "1")]), b"X-A: 1\r\n")

    def test_header_injection(self):
        """
        CR, LF and other controls in a value cannot start another header.
        """
        copy = decorate(b"A: b\n\nc\n", [("X-Team", "perl\r\nBcc: victim@example.org\x00")])
        self.assertEqual(copy, b"X-Team: perl Bcc: victim@example.org\nA: b\n\nc\n")

    def test_non_ascii(self):
        """
        Non-ASCII values are RFC 2047 encoded and decode back.
        """
        copy = decorate(b"A: b\n\nc\n", [("X-Distro-Tracker-Team", "équipe")])
        line, _, rest = copy.partition(b"\n")
        self.assertTrue(line.isascii())
        self.assertEqual(rest, b"A: b\n\nc\n")
        msg = parse(copy)
        self.assertEqual(msg["X-Distro-Tracker-Team"], "équipe")

    def test_surrogates(self):
        """
        A value holding surrogate escapes (raw 8-bit bytes) is encoded, not
        refused.
        """
        value = b"caf\xe9".decode("ascii", "surrogateescape")
        prefix = header_prefix(b"A: b\n", [("X-A", value)])
        self.assertTrue(prefix.isascii())

    def test_encoded_word_lookalike(self):
        """
        An ASCII value that would read as an encoded word is itself encoded,
        so it reads back literally.
        """
        copy = decorate(b"A: b\n\nc\n", [("X-A", "=?utf-8?q?x?=")])
        line = copy.partition(b"\n")[0]
        self.assertNotEqual(line, b"X-A: =?utf-8?q?x?=")
        self.assertEqual(parse(copy)["X-A"], "=?utf-8?q?x?=")

    def test_long_value(self):
        """
        A value too long for one line is folded into lines of at most 998
        characters.
        """
        prefix = header_prefix(b"A: b\r\n", [("X-A", "y" * 3000)])
        lines = prefix.split(b"\r\n")
        self.assertEqual(lines[-1], b"")
        self.assertTrue(all(len(line) <= 998 for line in lines))
        self.assertTrue(all(line.startswith(b" ") for line in lines[1:-1]))

    def test_invalid_name(self):
        """
        A header name that is not a field name is a programming error.
        """
        for name in ["X A", "X:A", "", "Équipe", "X\nA"]:
            self.assertRaises(ValueError, header_prefix, b"A: b\n", [(name, "v")])

    def test_mbox_from_line(self):
        """
        A leading mbox C{From } line is left out; the message follows intact.
        """
        message = fixture_bytes("person.eml")
        raw = b"From john@example.com Tue Apr 18 09:00:00 2023\n" + message
        self.assertEqual(decorate(raw, [("X-A", "1")]), b"X-A: 1\n" + message)

    def test_twenty_mebibytes(self):
        """
        A 20 MiB message is forwarded whole, its bytes untouched.
        """
        body = (b"z" * 1023 + b"\n") * (20 * 1024)
        raw = fixture_bytes("person.eml") + body
        copy = decorate(raw, forward_headers(FQDN, "hello", "contact"))
        prefix = header_prefix(raw, forward_headers(FQDN, "hello", "contact"))
        self.assertEqual(len(copy), len(prefix) + len(raw))
        self.assertTrue(copy.endswith(body))
