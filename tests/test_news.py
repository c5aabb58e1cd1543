"""
Tests for trackermail.news: which classified mail becomes news, with what
title, author and content.
"""

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.vendor import fixture_bytes, parse
from trackermail.classify import MAX_PACKAGES, classify
from trackermail.errors import ConfigError
from trackermail.news import MAX_TITLE, NewsDraft, news_for
from trackermail.vendor.base import IVendor, NewsSource, load_vendor


def _news(raw: bytes, vendor_name="debian", address_package=None):
    msg = parse(raw)
    classification = classify(msg, load_vendor(vendor_name), address_package)
    return news_for(msg, raw, classification, vendor_name)


@implementer(IVendor)
class FailingNewsVendor:
    name = "failing"

    def classify(self, msg, package, keyword):
        return ((package,) if package else ()), keyword

    def approve_default(self, msg):
        return False

    def extra_headers(self, msg, package, keyword, team):
        return []

    def news(self, msg, packages, keyword):
        raise RuntimeError("boom")


class DebianNewsTests(SynchronousTestCase):
    def test_accepted_source(self):
        """
        An accepted sourceful upload becomes news of its package, titled by
        its Subject, by its Changed-By, keeping the whole message.
        """
        raw = fixture_bytes("dak-accepted-source.eml")
        drafts = _news(raw)
        self.assertEqual(
            drafts,
            [
                NewsDraft(
                    package="hello",
                    title="Accepted hello 2.10-3 (source) into unstable",
                    content=raw,
                    content_type="message/rfc822",
                    created_by="Jérôme Développeur",
                    create_package=True,
                )
            ],
        )
        self.assertIs(drafts[0].content, raw)

    def test_accepted_source_and_binaries(self):
        """
        An upload of source and binaries is sourceful.
        """
        raw = fixture_bytes("dak-accepted-source.eml").replace(
            b"(source) into", b"(source all amd64) into"
        )
        self.assertEqual([d.package for d in _news(raw)], ["hello"])

    def test_accepted_without_changed_by(self):
        """
        Without a Changed-By field the news is by the sender.
        """
        raw = fixture_bytes("dak-accepted-source.eml").replace(b"Changed-By:", b"X-Not:")
        self.assertEqual(_news(raw)[0].created_by, "Debian FTP Masters")

    def test_changed_by_only_from_process_upload(self):
        """
        Changed-By is only trusted in mail of C{dak process-upload}.
        """
        raw = fixture_bytes("dak-accepted-source.eml").replace(
            b"X-DAK: dak process-upload", b"X-DAK: dak something-else"
        )
        self.assertEqual(_news(raw)[0].created_by, "Debian FTP Masters")

    def test_accepted_binary(self):
        """
        A binary-only upload makes no news.
        """
        self.assertEqual(_news(fixture_bytes("dak-accepted-binary.eml")), [])

    def test_removal(self):
        """
        Each source package a C{dak rm} mail removes gets a news item (not
        creating unknown packages).
        """
        raw = fixture_bytes("dak-rm.eml")
        drafts = _news(raw)
        self.assertEqual([d.package for d in drafts], ["oldfoo", "oldbar-plugin"])
        for draft in drafts:
            self.assertEqual(draft.title, "Bug#1030001: Removed package(s) from unstable")
            self.assertEqual(draft.created_by, "Debian FTP Masters")
            self.assertFalse(draft.create_package)
            self.assertIs(draft.content, raw)

    def test_testing_watch(self):
        """
        Testing watch mail becomes news of its package, by its sender.
        """
        drafts = _news(fixture_bytes("testing-watch.eml"))
        self.assertEqual(len(drafts), 1)
        self.assertEqual(drafts[0].package, "hello")
        self.assertEqual(drafts[0].title, "hello 2.10-3 MIGRATED to testing")
        self.assertEqual(drafts[0].created_by, "Debian testing watch")
        self.assertFalse(drafts[0].create_package)

    def test_other_mail(self):
        """
        Bug, build, NEW queue and VCS mail make no news.
        """
        for name in ["debbugs-report.eml", "buildd.eml", "dak-new.eml", "gitlab-push.eml"]:
            self.assertEqual(_news(fixture_bytes(name)), [], name)

    def test_generic_vendor(self):
        """
        The generic vendor makes no news, even of Debian archive mail.
        """
        self.assertEqual(_news(fixture_bytes("dak-accepted-source.eml"), "generic"), [])

    def test_vendor_object(self):
        """
        The vendor may be given as an object instead of its name.
        """
        raw = fixture_bytes("testing-watch.eml")
        msg = parse(raw)
        vendor = load_vendor("debian")
        drafts = news_for(msg, raw, classify(msg, vendor), vendor)
        self.assertEqual([d.package for d in drafts], ["hello"])

    def test_unknown_vendor(self):
        """
        An unknown vendor name is a configuration error.
        """
        raw = fixture_bytes("testing-watch.eml")
        msg = parse(raw)
        classification = classify(msg, load_vendor("generic"))
        self.assertRaises(ConfigError, news_for, msg, raw, classification, "nope")


class TitleAndAuthorTests(SynchronousTestCase):
    def test_encoded_subject(self):
        """
        The title is the decoded Subject.
        """
        raw = fixture_bytes("testing-watch.eml").replace(
            b"Subject: hello 2.10-3 MIGRATED to testing",
            b"Subject: =?utf-8?q?hello_2=2E10-3_migr=C3=A9?=\n to testing",
        )
        self.assertEqual(_news(raw)[0].title, "hello 2.10-3 migré to testing")

    def test_no_subject(self):
        """
        Without a Subject the title names the sender.
        """
        raw = fixture_bytes("testing-watch.eml").replace(
            b"Subject: hello 2.10-3 MIGRATED to testing\n", b""
        )
        self.assertEqual(_news(raw)[0].title, "Email news from Debian testing watch")

    def test_no_from(self):
        """
        Without a From the news is by "unknown".
        """
        raw = fixture_bytes("testing-watch.eml").replace(
            b"From: Debian testing watch <noreply@release.debian.org>\n", b""
        )
        self.assertEqual(_news(raw)[0].created_by, "unknown")

    def test_address_only_from(self):
        """
        A From without a display name attributes the news to the address.
        """
        raw = fixture_bytes("testing-watch.eml").replace(
            b"From: Debian testing watch <noreply@release.debian.org>",
            b"From: noreply@release.debian.org",
        )
        self.assertEqual(_news(raw)[0].created_by, "noreply@release.debian.org")

    def test_long_subject(self):
        """
        A very long Subject is cut to MAX_TITLE characters.
        """
        raw = fixture_bytes("testing-watch.eml").replace(
            b"Subject: hello 2.10-3 MIGRATED to testing",
            b"Subject: hello " + b"very " * 2000,
        )
        title = _news(raw)[0].title
        self.assertEqual(len(title), MAX_TITLE)
        self.assertTrue(title.endswith("\u2026"))

    def test_eight_bit_from(self):
        """
        Raw 8-bit bytes in From and Subject give text, not an exception.
        """
        raw = fixture_bytes("testing-watch.eml").replace(
            b"From: Debian testing watch", b"From: Debian t\xe9sting watch"
        ).replace(b"MIGRATED", b"MIGR\xc9")
        draft = _news(raw)[0]
        draft.title.encode("utf-8")
        draft.created_by.encode("utf-8")


class BadInputTests(SynchronousTestCase):
    def test_broken_mime(self):
        """
        A removal with broken MIME whose body lists nothing makes no news.
        """
        self.assertEqual(_news(fixture_bytes("broken-mime.eml")), [])

    def test_many_removals(self):
        """
        A removal listing 5,000 source packages makes news for the first
        MAX_PACKAGES only, with a warning.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        lines = b"".join(b"  pkg%d | 1.0-1 | source\n" % i for i in range(5000))
        raw = fixture_bytes("dak-rm.eml").replace(
            b"    oldfoo |     1.4-2 | source\n", lines
        )
        drafts = _news(raw)
        self.assertEqual(len(drafts), MAX_PACKAGES)
        self.assertEqual(drafts[0].package, "pkg0")
        self.assertIn(MAX_PACKAGES, [e.get("limit") for e in events])

    def test_invalid_and_duplicate_packages(self):
        """
        Invalid package names are skipped and duplicates collapse.
        """
        raw = fixture_bytes("dak-rm.eml").replace(
            b"    oldfoo |     1.4-2 | source\n",
            b"  Bad/Name | 1 | source\n  oldfoo | 1 | source\n  oldfoo | 2 | source\n",
        )
        self.assertEqual([d.package for d in _news(raw)], ["oldfoo", "oldbar-plugin"])

    def test_vendor_failure(self):
        """
        A vendor failing to find news is logged and makes no news.
        """
        raw = fixture_bytes("testing-watch.eml")
        msg = parse(raw)
        vendor = FailingNewsVendor()
        self.assertEqual(news_for(msg, raw, classify(msg, vendor), vendor), [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_news_source_defaults(self):
        """
        A vendor's NewsSource defaults to no package creation and the sender
        as author.
        """
        self.assertEqual(NewsSource("hello"), NewsSource("hello", False, None))
