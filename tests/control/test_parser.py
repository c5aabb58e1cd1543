"""
Tests for L{trackermail.control.parser}: reading a control mail's text and
classifying its lines, without a store.
"""

from twisted.trial.unittest import SynchronousTestCase

from tests.control import make_mail
from trackermail.control import parser
from trackermail.control.commands import obfuscate
from trackermail.control.parser import SKIP, STOP, Command, NotCommand, parse
from trackermail.message import parse_message, plain_text


class ParseTests(SynchronousTestCase):
    def test_names_are_case_insensitive(self):
        """SUBSCRIBE, Subscribe and subscribe are the same command."""
        for line in ("SUBSCRIBE foo", "Subscribe foo", "subscribe foo"):
            self.assertEqual(parse(line), Command("subscribe", package="foo"))

    def test_keyword_aliases(self):
        """keywords, tag and tags are other names of keyword."""
        for name in ("keyword", "keywords", "tag", "tags", "TAGS"):
            self.assertEqual(parse(name), Command("keyword"))

    def test_keyword_forms(self):
        """The four keyword forms (and their views) are told apart by @ and the operator."""
        self.assertEqual(parse("keyword"), Command("keyword"))
        self.assertEqual(parse("keyword a@b.c"), Command("keyword", email="a@b.c"))
        self.assertEqual(parse("keyword foo"), Command("keyword", package="foo"))
        self.assertEqual(parse("keyword foo a@b.c"),
                         Command("keyword", package="foo", email="a@b.c"))
        self.assertEqual(parse("keyword + vcs"),
                         Command("keyword", op="+", keywords=("vcs",)))
        self.assertEqual(parse("keyword a@b.c - vcs"),
                         Command("keyword", email="a@b.c", op="-", keywords=("vcs",)))
        self.assertEqual(parse("keyword foo = vcs bts"),
                         Command("keyword", package="foo", op="=", keywords=("vcs", "bts")))
        self.assertEqual(parse("keyword foo a@b.c +vcs"),
                         Command("keyword", package="foo", email="a@b.c", op="+",
                                 keywords=("vcs",)))

    def test_keywords_split_on_spaces_and_commas(self):
        """Keywords may be separated by spaces, commas or both."""
        self.assertEqual(parse("tag = vcs,bts, Build   summary ,").keywords,
                         ("vcs", "bts", "build", "summary"))

    def test_unsubscribe_token(self):
        """unsubscribe PKG takes an EMAIL (with @) or else an unsubscribe token."""
        self.assertEqual(parse("unsubscribe foo 12.abc_-"),
                         Command("unsubscribe", package="foo", token="12.abc_-"))
        self.assertEqual(parse("unsubscribe foo a@b.c"),
                         Command("unsubscribe", package="foo", email="a@b.c"))

    def test_team_member_commands(self):
        """mute-team and unmute-team take TEAM [PKG] [EMAIL]; owners' commands TEAM EMAIL."""
        self.assertEqual(parse("mute-team perl"), Command("mute-team", slug="perl"))
        self.assertEqual(parse("unmute-team perl foo"),
                         Command("unmute-team", slug="perl", package="foo"))
        self.assertEqual(parse("mute-team perl a@b.c"),
                         Command("mute-team", slug="perl", email="a@b.c"))
        self.assertEqual(parse("mute-team perl foo a@b.c"),
                         Command("mute-team", slug="perl", package="foo", email="a@b.c"))
        self.assertEqual(parse("add-team-member perl a@b.c"),
                         Command("add-team-member", slug="perl", email="a@b.c"))
        self.assertEqual(parse("remove-team-member perl a@b.c"),
                         Command("remove-team-member", slug="perl", email="a@b.c"))

    def test_team_keyword_forms(self):
        """team-keyword is TEAM, then the forms of keyword; team-tag(s) are its other names."""
        self.assertEqual(parse("team-keyword perl"), Command("team-keyword", slug="perl"))
        self.assertEqual(parse("team-tags perl foo a@b.c"),
                         Command("team-keyword", slug="perl", package="foo", email="a@b.c"))
        self.assertEqual(parse("team-keywords perl foo -vcs,bts"),
                         Command("team-keyword", slug="perl", package="foo", op="-",
                                 keywords=("vcs", "bts")))
        self.assertEqual(parse("team-tag perl a@b.c = vcs"),
                         Command("team-keyword", slug="perl", email="a@b.c", op="=",
                                 keywords=("vcs",)))

    def test_usage_errors(self):
        """A known command with arguments that do not fit is a usage error."""
        for line in ("subscribe", "subscribe a b c", "who", "help me", "confirm",
                     "keyword a b c", "keyword =", "which a b", "unsubscribe a b c",
                     "add-team-member perl", "add-team-member perl a@b.c x",
                     "remove-team-member", "mute-team", "mute-team perl a@b.c foo",
                     "mute-team perl foo bar", "mute-team perl a@b.c d@e.f",
                     "unmute-team a b c d", "team-keyword", "team-keyword = vcs",
                     "team-keyword a@b.c", "team-keyword perl =", "team-keyword perl a b c"):
            self.assertTrue(parse(line).usage, line)

    def test_stop_words(self):
        """quit, thanks (with punctuation) and -- stop the reading."""
        for line in ("quit", "Thanks!", "thank you", "--"):
            self.assertIs(parse(line), STOP, line)

    def test_skipped_lines(self):
        """Blank lines, # comments and quoted > lines are skipped."""
        for line in ("", "# subscribe foo", "> subscribe foo"):
            self.assertIs(parse(line), SKIP)

    def test_not_commands(self):
        """Anything else is not a command; an over-long line is not even looked at."""
        self.assertEqual(parse("hello there"), NotCommand())
        self.assertEqual(parse("subscribe " + "x" * 2000), NotCommand(too_long=True))


class MailTextTests(SynchronousTestCase):
    def test_subject_strips_reply_prefixes(self):
        """Re:, RE: and Aw: prefixes are not part of the command."""
        msg = parse_message(make_mail("", "Re: AW: re:CONFIRM abc"))
        self.assertEqual(parser.subject_line(msg), "CONFIRM abc")

    def test_subject_newlines_become_spaces(self):
        """An encoded newline in the Subject cannot start a new line."""
        msg = parse_message(make_mail("", "=?utf-8?q?subscribe_foo_a@b.c=0ABcc:_x@y?="))
        self.assertEqual(parser.subject_line(msg), "subscribe foo a@b.c Bcc: x@y")

    def test_first_plain_part(self):
        """The first text/plain part of a multipart mail is read, with its charset."""
        body = (
            "--b\r\nContent-Type: text/html\r\n\r\n<p>which</p>\r\n"
            "--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\nh=E9llo\r\n"
            "--b\r\nContent-Type: text/plain\r\n\r\nsecond\r\n--b--\r\n"
        )
        msg = parse_message(make_mail(body, content_type='multipart/alternative; boundary="b"'))
        self.assertEqual(plain_text(msg).strip(), "h\u00e9llo")

    def test_no_plain_part(self):
        """An HTML-only mail has no text to read."""
        msg = parse_message(make_mail("<p>which</p>", content_type="text/html"))
        self.assertIsNone(plain_text(msg))

    def test_plain_attachment_is_not_the_text(self):
        """A text/plain attachment is not the body."""
        body = (
            "--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\n"
            "which\r\n--b--\r\n"
        )
        msg = parse_message(make_mail(body, content_type='multipart/mixed; boundary="b"'))
        self.assertIsNone(plain_text(msg))

    def test_unknown_and_bogus_charsets(self):
        """An unknown charset, or a codec that is not a text encoding, is read as UTF-8."""
        for charset in ("x-no-such-charset", "base64", "zlib", "\x00"):
            msg = parse_message(make_mail("which \xe9\n".encode("utf-8"),
                                          content_type=f'text/plain; charset="{charset}"'))
            self.assertEqual(plain_text(msg), "which \xe9\r\n", charset)

    def test_undecodable_bytes(self):
        """Bytes that do not decode become U+FFFD instead of failing."""
        msg = parse_message(make_mail(b"which \xff\xfe\n",
                                      content_type="text/plain; charset=utf-8"))
        self.assertEqual(plain_text(msg), "which \ufffd\ufffd\r\n")

    def test_lines(self):
        """Any line end splits lines; lines come stripped."""
        self.assertEqual(list(parser.lines_of(" a \r\nb\rc\nd\u2028e")),
                         ["a", "b", "c", "d", "e"])


class ObfuscateTests(SynchronousTestCase):
    def test_domain_labels_hidden(self):
        """Each domain label is cut to its first letter followed by dots."""
        self.assertEqual(obfuscate("jane@example.org"), "jane@e......o..")
        self.assertEqual(obfuscate("x@a.bc.de"), "x@ab.d.")
