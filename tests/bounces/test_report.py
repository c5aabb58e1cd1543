"""
Tests for L{trackermail.bounces.report}: what C{trackermail analyze-bounce}
prints.
"""

import io
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from trackermail.bounces.report import analyze_bounce_main, analyze_file

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def fixture_path(name):
    return os.path.join(FIXTURES, name)


class AnalyzeFileTests(SynchronousTestCase):
    """
    The record of one file.
    """

    def test_record(self):
        """analyze_file returns exactly the documented keys."""
        path = fixture_path("postfix-dsn.eml")
        record = analyze_file(path)
        self.assertEqual(set(record), {"file", "bounce", "score", "hard", "recipients",
                                       "status", "details"})
        self.assertEqual(
            (record["file"], record["bounce"], record["hard"], record["recipients"],
             record["status"]),
            (path, True, True, ["alice@example.net", "bob@example.com"], "5.1.1"))
        self.assertIsInstance(record["score"], float)

    def test_details(self):
        """
        Each failed recipient has its status, hard/soft, reason, remote MTA
        and diagnostic.
        """
        details = analyze_file(fixture_path("postfix-dsn.eml"))["details"]
        self.assertEqual([set(d) for d in details], [
            {"recipient", "status", "hard", "reason", "remote_mta", "diagnostic"}] * 2)
        alice, bob = details
        self.assertEqual(
            (alice["recipient"], alice["status"], alice["hard"], alice["reason"],
             alice["remote_mta"]),
            ("alice@example.net", "5.1.1", True, "userunknown", "mail.example.net"))
        self.assertIn("User unknown", alice["diagnostic"])
        self.assertEqual(
            (bob["recipient"], bob["status"], bob["hard"], bob["reason"], bob["remote_mta"]),
            ("bob@example.com", "4.2.2", False, "mailboxfull", "mx.example.com"))

    def test_details_of_text_bounces(self):
        """A plain-text bounce gives each listed recipient its own reason."""
        details = analyze_file(fixture_path("qmail.eml"))["details"]
        self.assertEqual([(d["recipient"], d["reason"], d["hard"], d["remote_mta"])
                          for d in details],
                         [("carol@example.com", "userunknown", True, None),
                          ("dave@example.com", "mailboxfull", True, None)])

    def test_delay_warning(self):
        """A delay warning's recipient is soft; without a status it has expired."""
        with open(fixture_path("exim-delay.eml"), "rb") as fh:
            raw = fh.read()
        path = self.mktemp()
        with open(path, "wb") as fh:
            fh.write(raw.replace(b"451 4.7.1 Greylisted, please try again later",
                                 b"Connection timed out"))
        [detail] = analyze_file(path)["details"]
        self.assertEqual((detail["recipient"], detail["hard"], detail["status"],
                          detail["reason"]),
                         ("frank@slow.example.net", False, None, "expired"))

    def test_not_a_bounce_record(self):
        """A non-bounce has no recipients, details, status or hard/soft."""
        record = analyze_file(fixture_path("autoreply.eml"))
        self.assertEqual(
            (record["bounce"], record["hard"], record["recipients"], record["status"],
             record["details"]),
            (False, None, [], None, []))


class AnalyzeBounceMainTests(SynchronousTestCase):
    """
    One JSON line per file.
    """

    def test_main_lines(self):
        """One JSON line per file; a missing file gives an error line and exit 1."""
        out = io.StringIO()
        paths = [fixture_path("qmail.eml"), self.mktemp(), fixture_path("arf.eml")]
        self.assertEqual(analyze_bounce_main(paths, out), 1)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual([line["file"] for line in lines], paths)
        self.assertEqual(lines[0]["recipients"], ["carol@example.com", "dave@example.com"])
        self.assertEqual([d["recipient"] for d in lines[0]["details"]],
                         lines[0]["recipients"])
        self.assertIn("error", lines[1])
        self.assertNotIn("bounce", lines[1])
        self.assertFalse(lines[2]["bounce"])

    def test_main_success(self):
        """All files readable: exit code 0."""
        out = io.StringIO()
        self.assertEqual(analyze_bounce_main([fixture_path("exim.eml")], out), 0)
        self.assertEqual(len(out.getvalue().splitlines()), 1)
