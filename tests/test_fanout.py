"""
The dispatch and team handlers end to end through the processor: who gets a
copy, with which headers and envelope sender, and what is stored.
"""

from twisted.trial.unittest import SynchronousTestCase

from tests.support.pipeline import FQDN, deliver, make_pipeline, outbox, parse
from trackermail.bounces import verp
from trackermail.errors import PermanentFailure
from trackermail.store.bounce_stats import bounce_stats
from trackermail.store.news import news
from trackermail.store.packages import add_package
from trackermail.store.sql import Value
from trackermail.store.subscriptions import (
    set_subscription_keywords,
    subscribe,
    unsubscribe_token,
)
from trackermail.store.teams import (
    add_team,
    join_team,
    set_membership_muted,
    team_add_package,
)

BUG_MAIL = (
    b"From: Reporter <rep@example.net>\r\n"
    b"To: 123@bugs.debian.org\r\n"
    b"Subject: Bug#123: dpkg: crashes\r\n"
    b"Message-ID: <bug123@bugs.debian.org>\r\n"
    b"X-Loop: owner@bugs.debian.org\r\n"
    b"X-Debian-PR-Message: report 123\r\n"
    b"X-Debian-PR-Package: dpkg\r\n"
    b"X-Debian-PR-Source: dpkg\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=bugs.debian.org; b=abc\r\n"
    b"\r\n"
    b"It crashes.\r\n.leading dot line\r\n\xe9t\xe9 8-bit\r\n"
)


class DispatchFanoutTests(SynchronousTestCase):
    def setUp(self):
        self.processor, self.store, self.clock = make_pipeline(self)
        self.run = lambda program, *a: self.successResultOf(self.store.run(program, *a))

    def test_bug_mail_reaches_subscribers_wanting_bts(self):
        """A bug report reaches subscribers whose keyword set has bts, not the others."""
        self.run(subscribe, "alice@example.org", "dpkg")
        self.run(subscribe, "vcsonly@example.org", "dpkg")
        self.run(set_subscription_keywords, "vcsonly@example.org", "dpkg", "=", ["vcs"])
        outcome = deliver(self, self.processor, f"dispatch@{FQDN}", BUG_MAIL)
        self.assertEqual((outcome.action, outcome.fields["keyword"]), ("forwarded", "bts"))
        copies = outbox(self, self.store)
        self.assertEqual([c[0] for c in copies], ["alice@example.org"])

    def test_copy_headers_and_untouched_original(self):
        """A copy carries the tracker headers, then the original bytes unchanged."""
        self.run(subscribe, "alice@example.org", "dpkg")
        deliver(self, self.processor, f"dispatch@{FQDN}", BUG_MAIL)
        [(rcpt, sender, data)] = outbox(self, self.store)
        copy = parse(data)
        self.assertEqual(copy["X-Loop"], f"dispatch@{FQDN}")
        self.assertEqual(copy["X-Distro-Tracker-Package"], "dpkg")
        self.assertEqual(copy["X-Distro-Tracker-Keyword"], "bts")
        self.assertEqual(copy["List-Id"], f"<dpkg.{FQDN}>")
        self.assertEqual(copy["Precedence"], "list")
        token = self.run(unsubscribe_token, self.processor.config.tracker.secret_key,
                         "alice@example.org", "dpkg")
        self.assertEqual(copy["List-Unsubscribe"],
                         f"<mailto:control@{FQDN}?subject=unsubscribe%20dpkg%20{token}>")
        self.assertEqual(copy["X-Debian"], "tracker.debian.org")
        self.assertTrue(data.endswith(BUG_MAIL), "the original must follow byte for byte")
        self.assertNotIn(b"Delivered-To:", data)
        self.assertNotIn(b"Return-Path:", data)

    def test_verp_sender_is_signed_and_counted(self):
        """Each copy has a signed VERP envelope sender and counts as sent today."""
        self.run(subscribe, "Alice@Example.org", "dpkg")
        deliver(self, self.processor, f"dispatch@{FQDN}", BUG_MAIL)
        [(rcpt, sender, data)] = outbox(self, self.store)
        info = verp.decode(sender, self.processor.config.tracker.secret_key, FQDN)
        self.assertEqual(info.email.lower(), "alice@example.org")
        self.assertEqual(info.day.isoformat(), "2026-11-18")
        stats = self.run(bounce_stats, "alice@example.org")
        self.assertEqual([(s.day, s.sent, s.bounced) for s in stats], [("2026-11-18", 1, 0)])

    def test_body_stored_once_for_many(self):
        """A fan-out to many subscribers stores the body once."""
        for i in range(50):
            self.run(subscribe, f"user{i}@example.org", "dpkg")
        deliver(self, self.processor, f"dispatch@{FQDN}", BUG_MAIL)
        self.assertEqual(len(outbox(self, self.store)), 50)
        count = self.run(lambda: (yield Value("SELECT COUNT(*) FROM outbox_messages")))
        self.assertEqual(count, 1)

    def test_team_members_and_dedup(self):
        """Team members get a team-marked copy; a direct subscriber gets only the direct one."""
        self.run(add_package, "dpkg")
        self.run(add_team, "dpkg-team", "dpkg team", "owner@example.org")
        self.run(team_add_package, "dpkg-team", "dpkg")
        self.run(join_team, "dpkg-team", "both@example.org")
        self.run(join_team, "dpkg-team", "muted@example.org")
        self.run(set_membership_muted, "dpkg-team", "muted@example.org", True)
        self.run(subscribe, "both@example.org", "dpkg")
        deliver(self, self.processor, f"dispatch@{FQDN}", BUG_MAIL)
        copies = {rcpt: parse(data) for rcpt, _, data in outbox(self, self.store)}
        self.assertEqual(sorted(copies), ["both@example.org", "owner@example.org"])
        self.assertIsNone(copies["both@example.org"]["X-Distro-Tracker-Team"])
        self.assertEqual(copies["owner@example.org"]["X-Distro-Tracker-Team"], "dpkg-team")
        self.assertIsNone(copies["owner@example.org"]["List-Unsubscribe"])

    def test_loop_is_dropped(self):
        """Mail that already carries X-Loop: dispatch@FQDN is dropped."""
        self.run(subscribe, "alice@example.org", "dpkg")
        outcome = deliver(self, self.processor, f"dispatch+dpkg@{FQDN}",
                          f"X-Loop: dispatch@{FQDN}\r\n".encode() + BUG_MAIL)
        self.assertEqual(outcome.action, "dropped")
        self.assertEqual(outbox(self, self.store), [])

    def test_default_mail_needs_approval(self):
        """Unclassified mail to dispatch+PKG@ is dropped unless approved."""
        self.run(subscribe, "alice@example.org", "hello")
        plain = b"From: a@example.net\r\nSubject: hi\r\n\r\nhello\r\n"
        outcome = deliver(self, self.processor, f"dispatch+hello@{FQDN}", plain)
        self.assertEqual((outcome.action, outcome.detail),
                         ("dropped", "default mail that is not approved (hello/default)"))
        outcome = deliver(self, self.processor, f"dispatch+hello@{FQDN}",
                          b"X-Distro-Tracker-Approved: yes\r\n" + plain)
        self.assertEqual(outcome.action, "forwarded")

    def test_address_keyword(self):
        """dispatch+PKG_KW@ classifies by the address."""
        self.run(subscribe, "alice@example.org", "hello")
        self.run(set_subscription_keywords, "alice@example.org", "hello", "=", ["vcs"])
        outcome = deliver(self, self.processor, f"dispatch+hello_vcs@{FQDN}",
                          b"From: a@example.net\r\nSubject: commit\r\n\r\ndiff\r\n")
        self.assertEqual((outcome.action, outcome.fields["keyword"]), ("forwarded", "vcs"))

    def test_drop_log_says_what_nobody_wants(self):
        """A mail nobody wants is logged as such, with package, keyword and service."""
        from twisted.logger import formatEvent, globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        outcome = deliver(self, self.processor, f"dispatch@{FQDN}", BUG_MAIL)
        self.assertEqual((outcome.action, outcome.detail), ("dropped", "nobody wants dpkg/bts"))
        [event] = [e for e in events if e.get("action") == "dropped"]
        self.assertEqual((event["package"], event["keyword"], event["service"]),
                         ("dpkg", "bts", "dispatch"))
        self.assertIn("dropped nobody wants dpkg/bts", formatEvent(event))

    def test_no_package_is_dropped(self):
        """Mail to dispatch@ with no package is dropped and logged."""
        outcome = deliver(self, self.processor, f"dispatch@{FQDN}",
                          b"From: a@example.net\r\nSubject: hi\r\n\r\nhello\r\n")
        self.assertEqual((outcome.action, outcome.detail),
                         ("dropped", "no package could be found for it"))

    def test_same_message_twice_is_not_forwarded_twice(self):
        """A message processed again (crash before unlink) is recognised by its digest."""
        self.run(subscribe, "alice@example.org", "dpkg")
        deliver(self, self.processor, f"dispatch@{FQDN}", BUG_MAIL)
        outcome = deliver(self, self.processor, f"dispatch@{FQDN}", BUG_MAIL)
        self.assertEqual(outcome.action, "duplicate")
        self.assertEqual(len(outbox(self, self.store)), 1)

    def test_accepted_upload_becomes_news(self):
        """An accepted source upload becomes a news item of its package."""
        mail = (b"From: Debian FTP Masters <ftpmaster@ftp-master.debian.org>\r\n"
                b"Subject: Accepted newpkg 1.0-1 (source amd64) into unstable\r\n"
                b"X-Debian: DAK\r\nX-DAK: dak process-upload\r\n"
                b"X-Debian-Package: newpkg\r\n\r\n"
                b"Changed-By: Jane Doe <jane@example.org>\r\n"
                b"Files:\r\n abc 100 newpkg_1.0-1.dsc\r\n")
        outcome = deliver(self, self.processor, f"dispatch@{FQDN}", mail)
        self.assertEqual(outcome.fields["keyword"], "upload-source")
        [item] = self.successResultOf(self.store.run(news, "newpkg"))
        self.assertEqual(item.title, "Accepted newpkg 1.0-1 (source amd64) into unstable")
        self.assertEqual(item.created_by, "Jane Doe")

    def test_broken_mime_and_no_from(self):
        """A message without From and with broken MIME is still forwarded intact."""
        self.run(subscribe, "alice@example.org", "dpkg")
        mail = (b"Subject: =?utf-8?q?broken=ZZ?=\r\nX-Distro-Tracker-Package: dpkg\r\n"
                b"X-Distro-Tracker-Keyword: bts\r\n"
                b"Content-Type: multipart/mixed; boundary=\"nope\r\n\r\n\x00\xff garbage\r\n")
        outcome = deliver(self, self.processor, f"dispatch@{FQDN}", mail)
        self.assertEqual(outcome.action, "forwarded")
        [(rcpt, sender, data)] = outbox(self, self.store)
        self.assertTrue(data.endswith(mail))


    def test_huge_message_is_forwarded_intact(self):
        """A 20 MiB bug mail is forwarded byte for byte, its body stored once."""
        self.run(subscribe, "alice@example.org", "dpkg")
        self.run(subscribe, "bob@example.org", "dpkg")
        big = BUG_MAIL + (b"y" * 76 + b"\r\n") * (20 * 1024 * 1024 // 78)
        outcome = deliver(self, self.processor, f"dispatch@{FQDN}", big)
        self.assertEqual(outcome.fields["recipients"], 2)
        copies = outbox(self, self.store)
        self.assertTrue(all(data.endswith(big) for _, _, data in copies))

    def test_five_thousand_packages_are_capped(self):
        """A bug mail naming 5,000 packages is forwarded for at most 50 of them."""
        for i in range(60):
            self.run(subscribe, f"u{i}@example.org", f"pkg{i}")
        names = " ".join(f"pkg{i}" for i in range(5000)).encode()
        mail = BUG_MAIL.replace(b"X-Debian-PR-Package: dpkg", b"X-Debian-PR-Package: " + names)
        mail = mail.replace(b"X-Debian-PR-Source: dpkg\r\n", b"")
        outcome = deliver(self, self.processor, f"dispatch@{FQDN}", mail)
        self.assertEqual(len(outcome.fields["packages"]), 50)
        self.assertEqual(outcome.fields["recipients"], 50)


class TeamMailTests(SynchronousTestCase):
    def setUp(self):
        self.processor, self.store, self.clock = make_pipeline(self)
        self.run = lambda program, *a: self.successResultOf(self.store.run(program, *a))
        self.run(add_team, "qa", "QA team", "owner@example.org")
        self.run(join_team, "qa", "m@example.org")
        self.run(join_team, "qa", "quiet@example.org")
        self.run(set_membership_muted, "qa", "quiet@example.org", True)

    def test_people_mail_reaches_unmuted_members(self):
        """Mail to team+SLUG@ reaches every unmuted member with keyword contact."""
        outcome = deliver(self, self.processor, f"team+qa@{FQDN}",
                          b"From: p@example.net\r\nSubject: question\r\n\r\nhi\r\n")
        self.assertEqual(outcome.action, "forwarded")
        copies = {r: parse(d) for r, _, d in outbox(self, self.store)}
        self.assertEqual(sorted(copies), ["m@example.org", "owner@example.org"])
        self.assertEqual(copies["m@example.org"]["X-Distro-Tracker-Team"], "qa")
        self.assertEqual(copies["m@example.org"]["X-Distro-Tracker-Keyword"], "contact")

    def test_automatic_mail_is_dropped(self):
        """Mail that classifies to a package is dropped from team+SLUG@."""
        outcome = deliver(self, self.processor, f"team+qa@{FQDN}", BUG_MAIL)
        self.assertEqual((outcome.action, outcome.detail),
                         ("dropped", "automatic mail about a package (dpkg/bts): "
                                     "it reaches teams through dispatch"))

    def test_unknown_team_is_dropped(self):
        """Mail to an unknown team is dropped and logged."""
        outcome = deliver(self, self.processor, f"team+nope@{FQDN}",
                          b"From: p@example.net\r\n\r\nhi\r\n")
        self.assertEqual((outcome.action, outcome.detail), ("dropped", "there is no team 'nope'"))


class PipelineFailureTests(SynchronousTestCase):
    def setUp(self):
        self.processor, self.store, self.clock = make_pipeline(self)

    def test_no_delivery_address_is_permanent(self):
        """A message without a delivery address at our domain can never be processed."""
        d = self.processor.process_bytes(b"From: a@example.net\r\n\r\nhi\r\n")
        self.failureResultOf(d, PermanentFailure)

    def test_conflicting_delivery_addresses_is_permanent(self):
        """Two different delivery addresses at our domain: failed, not guessed."""
        raw = (f"Delivered-To: control@{FQDN}\r\nX-Original-To: dispatch@{FQDN}\r\n"
               "\r\nhi\r\n").encode()
        self.failureResultOf(self.processor.process_bytes(raw), PermanentFailure)

    def test_empty_message_is_permanent(self):
        """An empty file is a permanent failure."""
        self.failureResultOf(self.processor.process_bytes(b"\r\n"), PermanentFailure)
