"""
Tests for L{trackermail.bounces.formats}: plain-text bounces and Amazon SES
notifications.
"""

import email

from twisted.trial.unittest import SynchronousTestCase

from trackermail.bounces.formats import (
    cut_original,
    ses_recipients,
    text_about,
    text_recipients,
)

POSTFIX = """This is the mail system at host mx.example.org.

<jane@example.org>: host mx.example.net[192.0.2.22] said: 553
    5.1.8 <bounces@tracker.example.org>... Domain of sender
    address bounces@tracker.example.org does not exist (in reply to MAIL
    FROM command)
<john@example.org>: host mx.example.net[192.0.2.22] said: 552 5.2.2
    Mailbox full (in reply to RCPT TO command)
"""

SENDMAIL_V5 = """   ----- Transcript of session follows -----
554 <jane@example.org>... 550 Host unknown (Authoritative answer from name server)
While talking to smtp.example.edu:
>>> RCPT To:<john@example.edu>
<<< 550 <john@example.edu>... User unknown
550 <john@example.edu>... User unknown
"""


def message(text, subject="Undelivered Mail Returned to Sender"):
    return email.message_from_string(
        "From: MAILER-DAEMON@mx.example.org\nTo: bounces@tracker.example.org\n"
        "Subject: %s\n\n%s" % (subject, text))


class TextAboutTests(SynchronousTestCase):
    """
    What a report says about one address.
    """

    def test_folded_lines(self):
        """An indented continuation belongs to the recipient, whatever address it names."""
        about = text_about(POSTFIX, "jane@example.org")
        self.assertIn("(in reply to MAIL FROM command)", " ".join(about.split()))
        self.assertNotIn("john@", about)

    def test_next_session(self):
        """A recipient whose line gave its error does not take the next session's."""
        self.assertNotIn("User unknown", text_about(SENDMAIL_V5, "jane@example.org"))
        self.assertIn("User unknown", text_about(SENDMAIL_V5, "john@example.edu"))

    def test_absent(self):
        """An address the report does not name has nothing said about it."""
        self.assertEqual(text_about(POSTFIX, "nobody@example.org"), "")


class TextRecipientsTests(SynchronousTestCase):
    """
    Recipients of plain-text bounces, with their reasons.
    """

    def recipients(self, text, subject="Undelivered Mail Returned to Sender"):
        msg = message(text, subject)
        region = cut_original(text)
        found, delay = text_recipients(msg, None, region, text)
        return [(r.address, r.reason, r.hard) for r in found], delay

    def test_reasons(self):
        """Each listed recipient has the reason of its own lines."""
        self.assertEqual(self.recipients(POSTFIX), ([
            ("jane@example.org", "rejected", True),
            ("john@example.org", "mailboxfull", True),
        ], False))

    def test_single_recipient_whole_report(self):
        """The only recipient of a report is explained by the whole report."""
        text = ("Your message was not delivered within 0 days and 1 hours.\n"
                "Remote host is not responding.\n\n"
                "The following recipients did not receive this message:\n\n"
                "<jane@example.org>\n")
        self.assertEqual(self.recipients(text, "Mail System Error - Returned Mail"),
                         ([("jane@example.org", "expired", True)], False))

    def test_google_groups(self):
        """A Google Groups refusal, in any language, is about us: rejected."""
        text = ("Hallo bounces@tracker.example.org,\n\nDie Gruppe (team) ist"
                " möglicherweise nicht vorhanden.\n\nteam@googlegroups.com\n\n"
                "https://groups.google.com/support/\n")
        found, _ = self.recipients(text, "Delivery Status Notification (Failure)")
        self.assertEqual(found, [("team@googlegroups.com", "rejected", True)])


class SESTests(SynchronousTestCase):
    """
    Amazon SES JSON notifications.
    """

    def test_bounce(self):
        """A bounce notification's recipients carry their status and reason."""
        text = ('{"notificationType":"Bounce","bounce":{"bounceType":"Permanent",'
                '"bouncedRecipients":[{"emailAddress":"jane@example.org","action":"failed",'
                '"status":"5.1.1","diagnosticCode":"smtp; 550 5.1.1 user unknown"}]}}')
        is_bounce, [jane] = ses_recipients(text)
        self.assertTrue(is_bounce)
        self.assertEqual((jane.address, jane.status, jane.hard, jane.reason),
                         ("jane@example.org", "5.1.1", True, "userunknown"))

    def test_not_ses(self):
        """Other text is not an SES notification; a delivery is not a bounce."""
        self.assertIsNone(ses_recipients("hello"))
        self.assertEqual(ses_recipients('{"notificationType":"Delivery"}'), (False, []))
