"""
Tests for L{trackermail.bounces.codes}: status and reply codes.
"""

from twisted.trial.unittest import SynchronousTestCase

from trackermail.bounces.codes import (
    COMBINED_STATUS_CODES,
    enhanced_status,
    failure_status,
    reply_code,
    status_parts,
    status_reason,
)


class StatusReasonTests(SynchronousTestCase):
    """
    L{status_reason}: the reason a status code stands for.
    """

    def test_both_classes(self):
        """Entries for any class hold for 4.x.x and 5.x.x alike."""
        self.assertEqual((status_reason("5.2.2"), status_reason("4.2.2")),
                         ("mailboxfull", "mailboxfull"))

    def test_one_class(self):
        """Some codes mean something else, or nothing, in the other class."""
        self.assertEqual((status_reason("5.2.1"), status_reason("4.2.1")),
                         ("filtered", "suspend"))
        self.assertEqual((status_reason("5.1.1"), status_reason("4.1.1")),
                         ("userunknown", None))

    def test_vague_and_odd(self):
        """Vague, successful, malformed or missing codes name no reason."""
        for status in ("5.0.0", "5.5.0", "2.1.5", "5.x.1", "", None, "550", "5.999.1"):
            self.assertIsNone(status_reason(status), status)

    def test_leading_zeros(self):
        """"5.01.001" is read as 5.1.1."""
        self.assertEqual(status_reason("5.01.001"), "userunknown")


class FindingCodesTests(SynchronousTestCase):
    """
    Status and reply codes inside a diagnostic text.
    """

    def test_failure_status(self):
        """A transcript's success codes are passed over for the failure's."""
        text = "RCPT TO:<a@b> 250 2.1.5 Ok DATA 451 4.3.0 Error: queue file write error"
        self.assertEqual(enhanced_status(text), "2.1.5")
        self.assertEqual(failure_status(text), "4.3.0")
        self.assertIsNone(failure_status("250 2.0.0 Ok"))
        self.assertIsNone(failure_status(""))

    def test_not_versions(self):
        """Dotted numbers that are versions or addresses are not status codes."""
        self.assertIsNone(enhanced_status("MDaemon 3.5.2.1 ready at 192.0.2.5"))

    def test_reply_code(self):
        """A 4xx/5xx reply code counts; sizes and durations do not."""
        self.assertEqual(reply_code("host said: 552 Quota violation"), "552")
        self.assertIsNone(reply_code("message of 550 bytes"))
        self.assertIsNone(reply_code("250 ok"))

    def test_status_parts(self):
        """A status splits into its three numbers; anything else into None."""
        self.assertEqual(status_parts(" 5.7.26 "), ("5", "7", "26"))
        self.assertIsNone(status_parts("five"))
        self.assertEqual(COMBINED_STATUS_CODES["726"], "Multiple authentication checks failed")
