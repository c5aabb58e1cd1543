"""
Property-based fuzzing (hypothesis) of the code that reads what strangers
send: the control parser and the whole control handler, the router, the
VERP decoder and the bounce analyzer.

No exception escapes except the documented ones (L{InvalidVerp},
L{Rejection}, L{PermanentFailure} ...), and the results keep their
invariants (a routed address is always ours, a decoded VERP address is the
one that was signed). Runs are bounded and derandomized so CI is stable;
the atheris harnesses in C{tests/fuzz/} explore further, by hand.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.support.pipeline import FQDN, make_pipeline
from trackermail import routing
from trackermail.bounces import analyzer, verp
from trackermail.control import parser
from trackermail.errors import PermanentFailure
from trackermail.handling import Outcome
from trackermail.message import plain_text
from trackermail.processing import HandlerCrashed
from trackermail.store.subscriptions import subscribe

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)
SECRET = "fuzz-secret-key-0123456789"
FIXTURES = os.path.join(os.path.dirname(__file__), os.pardir, "bounces", "fixtures")


def _fixtures() -> list[bytes]:
    out = []
    for name in sorted(os.listdir(FIXTURES)):
        with open(os.path.join(FIXTURES, name), "rb") as f:
            out.append(f.read())
    return out


FIXTURE_DATA = _fixtures()

# Text that looks like mail and commands: the interesting alphabet, plus
# anything at all.
_MAILISH = st.sampled_from([
    "@", "<", ">", '"', "\\", "%", "!", ":", ";", ",", ".", "+", "_", "-", "=", " ", "\t",
    "\r", "\n", "\r\n", "\x00", "\x0b", "\x85", "\u2028", "\ufeff", "é", "ß", "\udcff",
    "control", "dispatch", "team", "bounces", "tracker", "example", "org", FQDN,
    "subscribe", "unsubscribe", "keyword", "tags", "confirm", "which", "who", "help",
    "quit", "thanks", "--", "#", ">", "=?utf-8?b?", "?=", "=?iso-8859-1?q?", "=C3=A9",
    "dpkg", "jane@example.org", "+", "=", "bts", "vcs", "join-team", "which-teams",
])
mailish_text = st.lists(st.one_of(_MAILISH, st.text(max_size=8)), max_size=40).map("".join)
any_text = st.one_of(mailish_text, st.text(max_size=200))

COMMAND_LINES = st.sampled_from([
    "subscribe dpkg", "subscribe dpkg jane@example.org", "subscribe dpkg bob@other.example",
    "unsubscribe dpkg", "unsubscribeall", "unsubscribeall x@y", "which", "which a@b",
    "who dpkg", "keyword", "keywords dpkg", "keyword dpkg + bts,vcs", "tag = default",
    "tags dpkg jane@example.org - bts", "keyword +", "keyword a b c d", "join-team perl",
    "leave-team perl x@y", "list-team-packages perl", "which-teams", "help", "confirm abc",
    "confirm " + "x" * 40, "subscribe", "subscribe a b c", "thanks", "quit", "--",
    "# comment", "> quoted", "subscribe ../../etc/passwd", "subscribe dpkg\x00",
    "subscribe " + "p" * 2000, "keyword dpkg =" + ",".join(["k"] * 200),
])
body_lines = st.lists(st.one_of(COMMAND_LINES, any_text), max_size=25)

CHARSETS = st.sampled_from([
    None, "us-ascii", "utf-8", "UTF-8", "iso-8859-1", "latin1", "windows-1252", "koi8-r",
    "iso-2022-jp", "shift_jis", "utf-16", "utf-16-le", "utf-32", "utf-7", "gb18030",
    "base64", "zlib", "rot13", "hex", "idna", "punycode", "undefined", "unknown-8bit",
    "x-unknown", "", '"', "utf-8\"; foo=\"bar", "../../x", "\u00e9",
])
ENCODINGS = st.sampled_from([
    None, "7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "BASE64",
    "garbage",
])


def _encode_body(text: str, charset, cte) -> bytes:
    try:
        data = text.encode(charset or "utf-8", "replace") if charset else text.encode(
            "utf-8", "surrogateescape")
    except (LookupError, TypeError, UnicodeError, ValueError):
        data = text.encode("utf-8", "surrogateescape")
    if cte and cte.lower() == "base64":
        import base64

        return base64.encodebytes(data)
    if cte == "quoted-printable":
        import quopri

        return quopri.encodestring(data)
    return data


@st.composite
def control_mails(draw) -> bytes:
    """Raw bytes of a mail to control@, from plausible to broken."""
    headers = []
    sender = draw(st.one_of(
        st.just("Jane <jane@example.org>"),
        st.just("=?utf-8?q?J=C3=A9r=C3=B4me?= <jerome@example.net>"),
        st.just("\"quoted, name\" <q@example.net>"),
        st.just("<>"), st.just(""), st.just(f"loop@{FQDN}"),
        any_text,
    ))
    headers.append(("From", sender))
    headers.append(("Subject", draw(st.one_of(COMMAND_LINES, any_text,
                                              st.just("Re: Re: subscribe dpkg")))))
    if draw(st.booleans()):
        headers.append(("Message-ID", draw(st.one_of(st.just("<a@b>"), any_text))))
    for name in draw(st.lists(st.sampled_from([
            "X-Loop", "Auto-Submitted", "Precedence", "References", "In-Reply-To",
            "Content-Disposition", "MIME-Version", "Reply-To"]), max_size=3)):
        headers.append((name, draw(any_text)))
    charset = draw(CHARSETS)
    cte = draw(ENCODINGS)
    body = _encode_body("\n".join(draw(body_lines)), charset, cte)
    shape = draw(st.sampled_from(["plain", "multipart", "html", "broken-multipart", "none"]))
    ctype = "text/plain" + (f'; charset="{charset}"' if charset is not None else "")
    out = [f"{k}: {v}" for k, v in headers]
    if shape == "plain":
        out.append(f"Content-Type: {ctype}")
        if cte:
            out.append(f"Content-Transfer-Encoding: {cte}")
        raw_body = body
    elif shape == "html":
        out.append("Content-Type: text/html; charset=utf-8")
        raw_body = b"<p>" + body + b"</p>"
    elif shape == "none":
        raw_body = body
    else:
        boundary = draw(st.sampled_from(["b", "==b==", "", "\"", "x" * 100]))
        out.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
        part = (f"--{boundary}\nContent-Type: {ctype}\n"
                + (f"Content-Transfer-Encoding: {cte}\n" if cte else "") + "\n").encode(
                    "utf-8", "surrogateescape")
        raw_body = b"preamble\n" + part + body + b"\n"
        if shape == "multipart":
            raw_body += f"--{boundary}--\n".encode()
    head = "\n".join(out).encode("utf-8", "surrogateescape")
    return (b"Delivered-To: control@" + FQDN.encode() + b"\nReturn-Path: <jane@example.org>\n"
            + head + b"\n\n" + raw_body)


def _mutate(data: bytes, draw) -> bytes:
    """A few random edits of C{data}: deletions, insertions, duplications, flips."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        kind = draw(st.sampled_from(["delete", "insert", "dup", "flip", "truncate", "crlf"]))
        i = draw(st.integers(0, len(data) - 1))
        j = min(len(data), i + draw(st.integers(0, 300)))
        if kind == "delete":
            del data[i:j]
        elif kind == "insert":
            data[i:i] = draw(st.one_of(
                st.binary(max_size=40),
                st.sampled_from([b"\n--", b"boundary=", b"Content-Type: multipart/report;",
                                 b"\nStatus: 5.1.1\n", b"\n\n", b"=?utf-8?b?", b"\r",
                                 b"Action: failed\n", b"Final-Recipient: rfc822;",
                                 b"\xff\xfe", b"charset=utf-16"])))
        elif kind == "dup":
            data[i:i] = data[i:j] * draw(st.integers(1, 20))
        elif kind == "flip":
            data[i] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[i:]
        else:
            data = bytearray(bytes(data).replace(b"\n", b"\r\n") if draw(st.booleans())
                             else bytes(data).replace(b"\r\n", b"\n"))
    return bytes(data)


class ControlParserFuzzTests(SynchronousTestCase):
    @FUZZ
    @given(st.one_of(any_text, COMMAND_LINES, st.text(min_size=900, max_size=1200)))
    def test_parse_any_line(self, line):
        """Any line classifies as skip, stop, not-a-command or a command; nothing raises."""
        result = parser.parse(line.strip())
        self.assertTrue(result is parser.SKIP or result is parser.STOP
                        or isinstance(result, (parser.NotCommand, parser.Command)))
        if isinstance(result, parser.Command) and not result.usage:
            self.assertIn(result.name, parser.NAMES.values())
            if result.op is not None:
                self.assertIn(result.op, "+-=")
                self.assertTrue(result.keywords)

    @FUZZ
    @given(any_text)
    def test_lines_of_any_text(self, text):
        """Splitting any body into lines never raises and never yields a line break."""
        for line in parser.lines_of(text):
            self.assertNotIn("\n", line)
            self.assertNotIn("\r", line)

    @FUZZ
    @given(st.one_of(control_mails(), st.binary(max_size=600)))
    def test_plain_text_and_subject_of_any_mail(self, raw):
        """The text and Subject of any mail are read without an exception escaping."""
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        text = plain_text(msg)
        self.assertTrue(text is None or isinstance(text, str))
        subject = parser.subject_line(msg)
        self.assertIsInstance(subject, str)
        self.assertNotIn("\n", subject)


class ControlHandlerFuzzTests(SynchronousTestCase):
    def setUp(self):
        self.processor, self.store, self.clock = make_pipeline(self)

    @FUZZ
    @given(control_mails())
    def test_handle_control_any_mail(self, raw):
        """Any mail to control@ is answered, ignored or dropped; at worst it is refused permanently."""
        self.clock.now += 1
        d = self.processor.process_bytes(raw)
        results = []
        d.addBoth(results.append)
        [result] = results
        if isinstance(result, Outcome):
            self.assertIn(result.action, ("replied", "ignored", "dropped", "duplicate"))
        else:
            # HandlerCrashed is a handler bug wrapped by the processor.
            self.assertTrue(result.check(PermanentFailure) and not result.check(HandlerCrashed),
                            result.getTraceback())


_ADDRESS_PARTS = st.sampled_from([
    "control", "dispatch", "team", "bounces", "dispatch+", "team+", "bounces+", "control+",
    "dpkg", "_", "bts", "+", "@", ".", "%", "!", '"', ":", "<", ">", " ", "\t", "\n",
    FQDN, FQDN.upper(), FQDN + ".", "other.example", "[127.0.0.1]", "é", "\x00", "..",
    "postmaster", "root", "a-b", "0", "-",
])
addresses = st.one_of(
    st.lists(st.one_of(_ADDRESS_PARTS, st.text(max_size=5)), max_size=12).map("".join),
    st.text(max_size=80),
)


class RouterFuzzTests(SynchronousTestCase):
    @FUZZ
    @given(addresses, st.booleans())
    def test_route_any_address(self, address, accept_unqualified):
        """Any address is routed to one of our services, or rejected; an accepted one is always ours."""
        try:
            route = routing.route_address(address, FQDN, accept_unqualified)
        except routing.Rejection as e:
            self.assertIn(e.code, (550,))
            self.assertIn(e.status, ("5.1.1", "5.7.1"))
            return
        self.assertIn(route.service, ("control", "dispatch", "team", "bounces"))
        self.assertTrue(route.address.endswith("@" + FQDN))
        local, _, domain = address.strip().strip("<>").rpartition("@")
        self.assertEqual(domain.lower().rstrip("."), FQDN)
        if route.service == "dispatch" and route.package is not None:
            self.assertRegex(route.package, routing.PACKAGE_RE)

    @FUZZ
    @given(st.lists(st.tuples(
        st.sampled_from(list(routing.DELIVERY_HEADERS) + ["delivered-to", "To", "X-Other"]),
        st.one_of(addresses, st.binary(max_size=40))), max_size=6),
        st.sampled_from(["pairs", "dict", "message"]))
    def test_find_delivery_address_any_headers(self, headers, shape):
        """Any delivery headers give one address of ours, or a permanent failure."""
        if shape == "dict":
            source = dict(headers)
        elif shape == "message":
            raw = b"".join(
                k.encode() + b": " + (v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape"))
                + b"\n" for k, v in headers) + b"\nbody\n"
            source = email.message_from_bytes(raw, policy=email.policy.default)
        else:
            source = headers
        try:
            found = routing.find_delivery_address(source, FQDN)
        except (routing.NoDeliveryAddress, routing.ConflictingDeliveryAddresses):
            return
        self.assertTrue(found.lower().endswith("@" + FQDN))
        self.assertFalse(any(c.isspace() for c in found))


days = st.dates(min_value=datetime.date(1970, 1, 1), max_value=datetime.date(2200, 12, 31))
recipients = st.one_of(
    st.emails(),
    st.tuples(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=20)).map(
        lambda t: f"{t[0]}@{t[1]}"),
)


class VerpFuzzTests(SynchronousTestCase):
    @FUZZ
    @given(st.one_of(addresses, st.text(max_size=2000),
                     st.builds(lambda t: f"bounces+{t}@{FQDN}", addresses)))
    def test_decode_any_text(self, address):
        """Decoding any text gives InvalidVerp, never another exception (and never a forgery)."""
        with self.assertRaises(verp.InvalidVerp):
            verp.decode(address, SECRET, FQDN)

    @FUZZ
    @given(st.one_of(addresses, st.text(max_size=100)))
    def test_decode_local_any_text(self, text):
        """decode_local on any text raises InvalidVerp only."""
        with self.assertRaises(verp.InvalidVerp):
            verp.decode_local(text, SECRET)

    @FUZZ
    @given(recipients, days, st.one_of(st.none(), st.integers(0, 2**63 - 1)))
    def test_round_trip(self, recipient, day, email_id):
        """What encode signs, decode gives back; what it cannot sign it refuses with ValueError."""
        try:
            address = verp.encode(recipient, day, SECRET, FQDN, email_id=email_id)
        except ValueError:
            self.assertIsNone(email_id)
            return
        info = verp.decode(address, SECRET, FQDN)
        self.assertEqual(info.day, day)
        if info.email is not None:
            self.assertEqual(info.email, recipient)
        else:
            self.assertEqual(info.email_id, email_id)
        self.assertLessEqual(len(address.rpartition("@")[0]), verp.MAX_LOCAL_PART)

    @FUZZ
    @given(st.emails(), days, st.data())
    def test_mutated_address_never_forges(self, recipient, day, data):
        """A tampered VERP address is refused, unless it only changed letter case."""
        address = verp.encode(recipient, day, SECRET, FQDN, email_id=7)
        mutated = _mutate(address.encode("utf-8"), data.draw).decode("utf-8", "replace")
        try:
            info = verp.decode(mutated, SECRET, FQDN)
        except verp.InvalidVerp:
            return
        original = verp.decode(address, SECRET, FQDN)
        self.assertEqual(info.day, original.day)
        self.assertEqual(info.email_id, original.email_id)
        if original.email is not None:
            self.assertEqual(info.email.lower(), original.email.lower())


class AnalyzerFuzzTests(SynchronousTestCase):
    def check(self, analysis):
        self.assertIsInstance(analysis, analyzer.BounceAnalyzer)
        self.assertGreaterEqual(analysis.score, 0.0)
        self.assertLessEqual(analysis.score, 1.0 + 1e-9)
        self.assertIsInstance(analysis.probable(), bool)
        self.assertIn(analysis.hard, (True, False, None))
        self.assertIsInstance(analysis.is_hard(), bool)
        self.assertIsInstance(analysis.is_soft(), bool)
        self.assertIsInstance(analysis.error_for_humans(), str)
        self.assertTrue(analysis.status is None or isinstance(analysis.status, str))
        for r in analysis.recipients:
            self.assertIsInstance(r, analyzer.FailedRecipient)
            self.assertIsInstance(r.address, str)
            self.assertIn(r.hard, (True, False, None))
        analysis.is_auto_reply()

    @FUZZ
    @given(st.one_of(st.binary(max_size=2000), st.text(max_size=500)))
    def test_detect_any_input(self, data):
        """Random bytes or text are analysed without an exception; the result is consistent."""
        self.check(analyzer.detect(data))

    @FUZZ
    @given(st.sampled_from(FIXTURE_DATA), st.data())
    def test_detect_mutated_fixtures(self, fixture, data):
        """Real bounces, mangled (cut, spliced, flipped), are analysed without an exception."""
        mutated = _mutate(fixture, data.draw)
        self.check(analyzer.detect(mutated))
        self.check(analyzer.detect(email.message_from_bytes(mutated)))
        self.check(analyzer.detect(mutated.decode("latin-1")))


# Header values that trip CPython's own email parser: a MIME parameter
# "t*" without "=" raises IndexError, at parse time for Content-Type and
# lazily, on first access, for other structured headers.
STDLIB_TRAPS = [
    b"Content-Type: text/plain;t;t*",
    b"Content-Type: ;t*",
    b"Content-Disposition: attachment;t;t*",
    b"Content-Type: multipart/mixed; boundary=b;t*",
    b"Content-Type: text/plain; charset*=",
    b"Content-Type: text/plain; charset*0*=x",
]
SERVICES = ["control", "dispatch", "dispatch+dpkg", "dispatch+dpkg_bts", "team+perl",
            "bounces+20261118-aaaaaaaa-x=example.org", "bounces+20261118-aaaaaaaa-7"]
_HEADER_NAMES = st.sampled_from([
    "From", "To", "Cc", "Subject", "Message-ID", "References", "In-Reply-To", "Date",
    "Content-Type", "Content-Disposition", "Content-Transfer-Encoding", "MIME-Version",
    "X-Loop", "Auto-Submitted", "Precedence", "List-Id", "X-Distro-Tracker-Package",
    "X-Distro-Tracker-Keyword", "X-Distro-Tracker-Approved", "X-Debian", "X-Debian-PR-Message",
    "X-Debian-PR-Package", "X-Debian-PR-Source", "X-Loop", "X-GitLab-Project-Path",
    "X-Git-Repo", "Return-Path", "Delivered-To", "X-Original-To",
])
_HEADER_VALUE = st.one_of(
    any_text,
    st.sampled_from([v.split(b": ", 1)[1].decode() for v in STDLIB_TRAPS]),
    st.sampled_from(["owner@bugs.debian.org", "DAK", "dpkg", "bts", "multipart/report; "
                     "report-type=delivery-status; boundary=x", "auto-replied", "bulk"]),
)


@st.composite
def any_service_mails(draw) -> bytes:
    to = draw(st.sampled_from(SERVICES))
    headers = draw(st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUE), max_size=10))
    head = b"".join(k.encode() + b": " + v.encode("utf-8", "surrogateescape") + b"\n"
                    for k, v in headers)
    body = draw(st.one_of(st.binary(max_size=300), body_lines.map(
        lambda lines: "\n".join(lines).encode("utf-8", "surrogateescape"))))
    return (f"Delivered-To: {to}@{FQDN}\nReturn-Path: <x@example.net>\n".encode()
            + head + b"\n" + body)


class PipelineFuzzTests(SynchronousTestCase):
    def setUp(self):

        self.processor, self.store, self.clock = make_pipeline(self)
        self.successResultOf(self.store.run(subscribe, "alice@example.org", "dpkg"))

    def process(self, raw):
        self.clock.now += 1
        results = []
        self.processor.process_bytes(raw).addBoth(results.append)
        [result] = results
        if not isinstance(result, Outcome):
            # HandlerCrashed is a handler bug wrapped by the processor.
            self.assertTrue(result.check(PermanentFailure) and not result.check(HandlerCrashed),
                            result.getTraceback())
        return result

    @FUZZ
    @given(any_service_mails())
    def test_any_mail_to_any_service(self, raw):
        """Any mail to any of our services gets an outcome or goes to failed/; no handler crashes."""
        self.process(raw)

    def test_stdlib_parser_traps(self):
        """Headers that make the email package itself raise give a defined outcome everywhere."""
        for to in SERVICES:
            for trap in STDLIB_TRAPS:
                raw = (f"Delivered-To: {to}@{FQDN}\nReturn-Path: <x@example.net>\n"
                       f"From: Jane <jane@example.org>\nSubject: which\n"
                       f"X-Distro-Tracker-Package: dpkg\n").encode() + trap + b"\n\nwhich\n"
                self.process(raw)
                detected = analyzer.detect(raw)
                self.assertIsInstance(detected.error_for_humans(), str)
                try:
                    msg = email.message_from_bytes(raw, policy=email.policy.default)
                except IndexError:
                    continue
                self.assertEqual(routing.find_delivery_address(msg, FQDN), f"{to}@{FQDN}")
                self.assertTrue(plain_text(msg) is None
                                or isinstance(plain_text(msg), str))
