"""
Tests for L{trackermail.bounces.analyzer}.
"""

import os
from email.message import EmailMessage

from twisted.trial.unittest import SynchronousTestCase

from tests.support.corpus import corpus_message
from trackermail.bounces.analyzer import (
    BounceAnalyzer,
    FailedRecipient,
    bounce_to,
    detect,
)
from trackermail.bounces.report import analyze_file

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as fh:
        return fh.read()


def summary(analysis):
    return [(r.address.lower(), r.status, r.hard) for r in analysis.recipients]


class DSNTests(SynchronousTestCase):
    """
    RFC 3464 delivery-status reports, read with Lamson's API.
    """

    def setUp(self):
        self.bounce = detect(fixture("postfix-dsn.eml"))

    def test_probable(self):
        """A Postfix DSN is a probable bounce with a high score."""
        self.assertTrue(self.bounce.probable())
        self.assertGreaterEqual(self.bounce.score, 0.9)
        self.assertFalse(self.bounce.probable(threshold=1.1))

    def test_all_recipients(self):
        """Every failed recipient is listed with its own status and hard/soft."""
        self.assertEqual(summary(self.bounce), [
            ("alice@example.net", "5.1.1", True),
            ("bob@example.com", "4.2.2", False),
        ])
        self.assertIsInstance(self.bounce.recipients[0], FailedRecipient)
        self.assertEqual(self.bounce.recipients[1].remote_mta, "mx.example.com")

    def test_status_texts(self):
        """The primary recipient's status comes with its RFC 3463 texts."""
        self.assertEqual(self.bounce.primary_status, (5, "Permanent Failure"))
        self.assertEqual(self.bounce.secondary_status, (1, "Addressing Status"))
        self.assertEqual(self.bounce.combined_status, (11, "Bad destination mailbox address"))
        self.assertTrue(self.bounce.is_hard())
        self.assertFalse(self.bounce.is_soft())

    def test_lamson_fields(self):
        """MTAs, recipient, action and diagnostic are exposed as in Lamson."""
        self.assertEqual(self.bounce.reporting_mta, "mx.example.org")
        self.assertEqual(self.bounce.remote_mta, "mail.example.net")
        self.assertEqual(self.bounce.final_recipient, "alice@example.net")
        self.assertEqual(self.bounce.action, "failed")
        code, text = self.bounce.diagnostic_codes
        self.assertEqual(code, "550")
        self.assertIn("User unknown", text)
        self.assertIn("User unknown", self.bounce.error_for_humans())

    def test_parts(self):
        """The notification, report and returned original are reachable."""
        self.assertEqual(
            sorted(self.bounce.content_parts),
            ["delivery report", "notification", "undelivered message"])
        self.assertEqual(self.bounce.report.get_content_type(), "message/delivery-status")
        self.assertIn(b"mail system", self.bounce.notification.get_payload(decode=True))
        self.assertEqual(str(self.bounce.original["Subject"]),
                         "hello 1.0-1 accepted into unstable")

    def test_message_object(self):
        """An already parsed EmailMessage gives the same answer as bytes."""
        from email import message_from_bytes, policy
        msg = message_from_bytes(fixture("postfix-dsn.eml"), policy=policy.default)
        self.assertEqual(summary(detect(msg)), summary(self.bounce))

    def test_broken_boundary(self):
        """A report whose declared MIME boundary never occurs is still read."""
        bounce = detect(fixture("broken-boundary.eml"))
        self.assertTrue(bounce.probable())
        self.assertEqual(summary(bounce), [("rupert@example.net", "5.7.1", True)])
        self.assertEqual(bounce.combined_status,
                         (71, "Delivery not authorized, message refused"))

    def test_unknown_status_code(self):
        """An unknown status code gets a placeholder text instead of an error."""
        raw = fixture("postfix-dsn.eml").replace(b"Status: 5.1.1", b"Status: 5.9.99")
        bounce = detect(raw)
        self.assertEqual(bounce.primary_status, (5, "Permanent Failure"))
        self.assertEqual(bounce.secondary_status[0], 9)
        self.assertIn("Unknown", bounce.secondary_status[1])
        self.assertEqual(bounce.combined_status[0], 999)
        self.assertTrue(bounce.is_hard())

    def test_success_dsn(self):
        """A DSN reporting successful delivery is not a bounce."""
        bounce = detect(fixture("delivered-dsn.eml"))
        self.assertFalse(bounce.probable())
        self.assertEqual(bounce.recipients, [])
        self.assertEqual(bounce.primary_status, (None, None))
        self.assertEqual(bounce.combined_status, (None, None))


class PlainTextFormatTests(SynchronousTestCase):
    """
    Bounces without a delivery-status part, one per common MTA format.
    """

    def check(self, name, expected, hard):
        bounce = detect(fixture(name))
        self.assertTrue(bounce.probable(), name)
        self.assertEqual(summary(bounce), expected)
        self.assertEqual(bounce.is_hard(), hard)
        self.assertEqual(bounce.is_soft(), not hard)
        return bounce

    def test_qmail(self):
        """qmail-send lists each recipient with its own reason."""
        bounce = self.check("qmail.eml", [
            ("carol@example.com", "5.1.1", True),
            ("dave@example.com", None, True),
        ], True)
        self.assertEqual(bounce.reporting_mta, "mail.example.com")
        self.assertEqual(bounce.primary_status, (5, "Permanent Failure"))

    def test_exim(self):
        """Exim's text bounce yields the X-Failed-Recipients address and its status."""
        self.check("exim.eml", [("erin@example.org", "5.1.1", True)], True)

    def test_exim_delay(self):
        """An Exim delay warning is a soft bounce."""
        bounce = self.check("exim-delay.eml", [("frank@slow.example.net", "4.7.1", False)], False)
        self.assertTrue(bounce.delay_warning)

    def test_sendmail(self):
        """Sendmail's 'permanent fatal errors' text without a DSN part."""
        self.check("sendmail-text.eml", [("grace@example.com", "5.1.1", True)], True)

    def test_exchange(self):
        """An Exchange 'did not reach the following recipient(s)' NDR."""
        self.check("exchange.eml", [("heidi@corp.example.com", "5.1.1", True)], True)

    def test_gmail(self):
        """Gmail's 'failed permanently' notice, status taken from the details."""
        self.check("gmail.eml", [("ivan@example.com", "5.2.1", True)], True)

    def test_yahoo(self):
        """Yahoo's failure notice; the SMTP reply code 552 makes it hard."""
        self.check("yahoo.eml", [("judy@example.co.uk", None, True)], True)

    def test_ses(self):
        """An Amazon SES JSON notification; 4.2.2 mailbox full is soft."""
        self.check("ses.eml", [("mallory@example.com", "4.2.2", False)], False)


class NotABounceTests(SynchronousTestCase):
    """
    Automatic mail that is not a delivery failure.
    """

    def test_autoreply(self):
        """An out-of-office auto-reply is not a bounce."""
        bounce = detect(fixture("autoreply.eml"))
        self.assertFalse(bounce.probable())
        self.assertEqual(bounce.kind, "autoreply")
        self.assertEqual(bounce.recipients, [])
        self.assertFalse(bounce.is_hard())
        self.assertFalse(bounce.is_soft())

    def test_autoreply_subjects(self):
        """Common vacation subjects mark a message as an auto-reply."""
        for subject in ("Out of Office: hello", "Automatic reply: [hello] summary",
                        "Abwesenheitsnotiz", "Réponse automatique"):
            msg = EmailMessage()
            msg["From"] = "someone@example.com"
            msg["Subject"] = subject
            msg.set_content("I am away, your message will be read later.")
            self.assertFalse(detect(msg).probable(), subject)

    def test_feedback_report(self):
        """An ARF abuse report is not a bounce."""
        bounce = detect(fixture("arf.eml"))
        self.assertFalse(bounce.probable())
        self.assertEqual(bounce.kind, "feedback")

    def test_ordinary_mail(self):
        """A person's ordinary mail scores below the threshold."""
        msg = EmailMessage()
        msg["From"] = "alice@example.net"
        msg["To"] = "control@tracker.example.org"
        msg["Subject"] = "subscribe hello"
        msg["Received"] = "from a by b; Tue, 4 Mar 2025 10:00:00 +0000"
        msg.set_content("subscribe hello\nthanks\n")
        bounce = detect(msg)
        self.assertFalse(bounce.probable())
        self.assertLess(bounce.score, 0.3)
        self.assertEqual(bounce.error_for_humans(), "No Diagnostic-Code given.")


class OddInputTests(SynchronousTestCase):
    """
    Bad input gives a defined answer, never an exception.
    """

    def test_garbage(self):
        """Random bytes, empty input and non-mail objects are not bounces."""
        for data in (b"", b"\x00\xff\xfe" * 1000, b"\n\n\n", "plain text", None, 42,
                     b"Content-Type: multipart/report; boundary=\"x\"\n\n--x\n"):
            bounce = detect(data)
            self.assertIsInstance(bounce, BounceAnalyzer)
            self.assertFalse(bounce.probable(), repr(data)[:40])
            self.assertEqual(bounce.recipients, [])

    def test_undecodable_headers(self):
        """8-bit and broken encoded-word headers do not stop the analysis."""
        raw = fixture("qmail.eml").replace(
            b"Subject: failure notice",
            b"Subject: =?x-unknown?B?////?= \xff\xfe failure notice\nX-Junk: =?utf-8?q?=ZZ?=")
        bounce = detect(raw)
        self.assertTrue(bounce.probable())
        self.assertEqual(len(bounce.recipients), 2)

    def test_truncated_dsn(self):
        """A DSN cut off in the middle still yields what is there."""
        raw = fixture("postfix-dsn.eml")
        raw = raw[:raw.index(b"Final-Recipient: rfc822; bob")]
        bounce = detect(raw)
        self.assertTrue(bounce.probable())
        self.assertEqual(summary(bounce), [("alice@example.net", "5.1.1", True)])

    def test_dsn_without_status(self):
        """A DSN group with no Status falls back to the SMTP reply code."""
        raw = fixture("postfix-dsn.eml").replace(b"Status: 4.2.2\n", b"")
        raw = raw.replace(b"452 4.2.2 <bob@example.com>: Mailbox full",
                          b"452 <bob@example.com>: Mailbox full")
        bounce = detect(raw)
        self.assertEqual(summary(bounce)[1], ("bob@example.com", None, False))

    def test_deep_nesting(self):
        """Absurdly nested MIME is walked within bounds."""
        inner = b"Content-Type: text/plain\n\nhello\n"
        for i in range(60):
            inner = (b"Content-Type: multipart/mixed; boundary=\"b%d\"\n\n--b%d\n" % (i, i)
                     + inner + b"\n--b%d--\n" % i)
        bounce = detect(inner)
        self.assertFalse(bounce.probable())


class BounceToTests(SynchronousTestCase):
    """
    The bounce_to decorator routes bounces away from the normal handler.
    """

    def setUp(self):
        self.calls = []

        def soft(msg, *args):
            self.calls.append(("soft", args))

        def hard(msg, *args):
            self.calls.append(("hard", args))

        @bounce_to(soft=soft, hard=hard)
        def handler(msg, *args):
            """The normal handler."""
            self.calls.append(("normal", args))

        self.handler = handler

    def test_routing(self):
        """Hard bounces, soft bounces and other mail reach their own handler."""
        self.handler(fixture("postfix-dsn.eml"), 1)
        self.handler(fixture("exim-delay.eml"), 2)
        self.handler(fixture("autoreply.eml"), 3)
        self.assertEqual(self.calls, [("hard", (1,)), ("soft", (2,)), ("normal", (3,))])
        self.assertEqual(self.handler.__doc__, "The normal handler.")


class CorpusTests(SynchronousTestCase):
    """
    Files of the labelled bounce corpus, where it is available.
    """

    def analyse(self, name):
        return analyze_file(str(corpus_message(name)))

    def test_exim_two_recipients(self):
        """An Exim bounce for two recipients reports both."""
        record = self.analyse("soe-lhost-exim-02.eml")
        self.assertTrue(record["bounce"])
        self.assertEqual(sorted(record["recipients"]),
                         ["kijitora@example.jp", "sabatora@example.jp"])
        self.assertTrue(record["hard"])

    def test_qmail_two_recipients(self):
        """A qmail bounce for two recipients reports both."""
        record = self.analyse("soe-lhost-qmail-02.eml")
        self.assertEqual(sorted(record["recipients"]),
                         ["filtered@example.jp", "userunknown@example.jp"])

    def test_rfc3464_mixed(self):
        """A DSN mixing failed and delayed recipients keeps each one's status."""
        bounce = detect(corpus_message("soe-rfc3464-35.eml").read_bytes())
        by_address = {r.address.lower(): (r.status, r.hard) for r in bounce.recipients}
        self.assertEqual(by_address["sabatora@cat.example.net"], ("4.0.0", False))
        self.assertEqual(by_address["mikeneko@neko.example.or.jp"], ("5.0.0", True))

    def test_ses_json(self):
        """An Amazon SES notification yields its bounced recipient."""
        record = self.analyse("soe-lhost-amazonses-09.eml")
        self.assertEqual((record["bounce"], record["recipients"], record["status"], record["hard"]),
                         (True, ["bounce@simulator.amazonses.com"], "5.1.1", True))

    def test_gmail_delay(self):
        """A Gmail delay notice is a soft bounce."""
        record = self.analyse("soe-lhost-gmail-06.eml")
        self.assertEqual((record["bounce"], record["hard"], record["recipients"]),
                         (True, False, ["kijitora@example.jp"]))

    def test_non_bounces(self):
        """Vacation mail, ARF reports and success notices are not bounces."""
        for name in ("soe-rfc3834-05.eml", "soe-arf-01.eml", "soe-lhost-amazonses-13.eml",
                     "soe-is-not-bounce-01.eml"):
            self.assertFalse(self.analyse(name)["bounce"], name)
