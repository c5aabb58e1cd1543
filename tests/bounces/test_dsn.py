"""
Tests for L{trackermail.bounces.dsn}: the recipients of delivery status
notifications, with their reasons.
"""

from twisted.trial.unittest import SynchronousTestCase

from trackermail.bounces.dsn import parse_dsn, read_dsn

REPORT = """Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; jane@example.org
Action: failed
Status: 5.0.0

Final-Recipient: rfc822; john@example.net
Action: delayed
Status: 4.0.0
"""

NOTIFICATION = """This is the MAILER-DAEMON.

jane@example.org: 550 5.1.1 <jane@example.org>: Recipient address rejected: User unknown
john@example.net: 451 5.1.1 this code is of the other class
"""


class ParseTests(SynchronousTestCase):
    """
    L{parse_dsn} splits the fields.
    """

    def test_groups(self):
        """Per-message fields and one dict per recipient group."""
        fields, groups = parse_dsn(REPORT)
        self.assertEqual(fields, {"reporting-mta": "dns; mx.example.org"})
        self.assertEqual([g["final-recipient"] for g in groups],
                         ["rfc822; jane@example.org", "rfc822; john@example.net"])

    def test_run_together(self):
        """Groups without a blank line between them are still told apart."""
        _, groups = parse_dsn("Final-Recipient: rfc822; a@example.org\nStatus: 5.1.1\n"
                              "Final-Recipient: rfc822; b@example.org\nStatus: 5.2.2\n")
        self.assertEqual([g["status"] for g in groups], ["5.1.1", "5.2.2"])


class ReadTests(SynchronousTestCase):
    """
    L{read_dsn} gives each failed recipient its status, hard/soft and reason.
    """

    def about(self, address):
        for line in NOTIFICATION.splitlines():
            if line.startswith(address):
                return line
        return ""

    def test_notification_explains(self):
        """
        A group without a Diagnostic-Code takes its explanation, and a
        precise status of the same class, from the notification.
        """
        report = read_dsn([REPORT], self.about)
        jane, john = report.recipients
        self.assertEqual((jane.address, jane.status, jane.hard, jane.reason),
                         ("jane@example.org", "5.1.1", True, "userunknown"))
        self.assertIn("Recipient address rejected", jane.diagnostic)
        self.assertEqual((john.status, john.hard, john.action), ("4.0.0", False, "delayed"))
        self.assertTrue(report.delay_warning)

    def test_without_notification(self):
        """Without any text, a failed recipient's reason is undefined."""
        jane, john = read_dsn([REPORT]).recipients
        self.assertEqual((jane.status, jane.reason), ("5.0.0", "undefined"))
        self.assertEqual(john.reason, "expired")

    def test_whole_notification_for_one_recipient(self):
        """A report for one recipient is explained by its whole notification."""
        text = "Final-Recipient: rfc822; jane@example.org\nAction: failed\nStatus: 5.0.0\n"
        whole = ("... while talking to mx.example.org.:\n<<< 554 IP=192.0.2.1 - A problem"
                 " occurred. (BL)\n")
        [jane] = read_dsn([text], lambda address: "", whole).recipients
        self.assertEqual(jane.reason, "blocked")
        [jane, john] = read_dsn([REPORT], lambda address: "", whole).recipients
        self.assertEqual(jane.reason, "undefined")

    def test_command_from_notification(self):
        """The notification tells which SMTP command the refusal answered."""
        text = ("Final-Recipient: rfc822; jane@example.org\nAction: failed\nStatus: 5.7.1\n"
                "Diagnostic-Code: smtp; 550 5.7.1 Access denied\n")
        note = ("<jane@example.org>: host mx.example.org[192.0.2.1] said: 550 5.7.1 Access"
                " denied (in reply to MAIL FROM command)")
        [jane] = read_dsn([text], lambda address: note).recipients
        self.assertEqual(jane.reason, "rejected")
        [jane] = read_dsn([text]).recipients
        self.assertEqual(jane.reason, "blocked")

    def test_mailer_diagnostic(self):
        """A local mailer's exit status is a mailer error."""
        text = ("Final-Recipient: rfc822; jane@example.org\nAction: failed\nStatus: 5.0.0\n"
                "Diagnostic-Code: X-Unix; 255\n")
        [jane] = read_dsn([text]).recipients
        self.assertEqual(jane.reason, "mailererror")

    def test_remote_mta(self):
        """The Remote-MTA is kept, without its type."""
        text = ("Final-Recipient: rfc822; jane@example.org\nAction: failed\nStatus: 5.2.2\n"
                "Remote-MTA: dns; mx.example.org\n"
                "Diagnostic-Code: smtp; 552 5.2.2 Mailbox full\n")
        report = read_dsn([text])
        [jane] = report.recipients
        self.assertEqual((jane.remote_mta, jane.reason, report.remote_mta),
                         ("mx.example.org", "mailboxfull", "mx.example.org"))

    def test_success(self):
        """A report of successful deliveries only has no failed recipient."""
        text = "Final-Recipient: rfc822; jane@example.org\nAction: delivered\nStatus: 2.0.0\n"
        report = read_dsn([text])
        self.assertEqual((report.delivered, report.recipients), (True, []))
