"""
Crash safety of the whole tracker: a twistd child killed with SIGKILL in
the middle of a stream of LMTP deliveries loses no message that got a 250,
and processing after the restart forwards nothing twice.
"""

import os
import re
import signal
import smtplib
import sqlite3

from twisted.trial.unittest import SynchronousTestCase

from tests.support.net import wait_until
from tests.support.tracker import FQDN, TrackerProcess

MSGID = re.compile(rb"^Message-ID: <(crash-\d+)@example\.net>", re.M | re.I)


class CrashTests(SynchronousTestCase):
    def setUp(self):
        self.tracker = TrackerProcess(self, spool={"rescan_interval": 1})
        self.dir = self.tracker.dir
        self.db = os.path.join(self.dir, "tracker.sqlite")
        self.tracker.cli("migrate")
        self.tracker.cli("subscribe", "--create", "pkg", "jane@example.org")

    def start(self):
        self.tracker.start()
        self.port = self.tracker.ports["lmtp"]
        self.proc = self.tracker.proc

    def forwarded_ids(self) -> list[bytes]:
        conn = sqlite3.connect(self.db, timeout=30)
        try:
            rows = conn.execute(
                "SELECT m.body FROM outbox_deliveries d "
                "JOIN outbox_messages m ON m.id = d.message_id").fetchall()
        finally:
            conn.close()
        return [m.group(1) for (body,) in rows for m in [MSGID.search(bytes(body))] if m]

    def test_sigkill_loses_nothing_acknowledged_and_forwards_nothing_twice(self):
        """Every 250-acknowledged message is forwarded exactly once across a SIGKILL."""
        self.start()
        acked = []
        client = smtplib.LMTP("127.0.0.1", self.port)
        for i in range(400):
            data = (f"From: rep@example.net\r\nSubject: bug {i}\r\n"
                    f"Message-ID: <crash-{i}@example.net>\r\n"
                    f"X-Distro-Tracker-Package: pkg\r\nX-Distro-Tracker-Keyword: bts\r\n"
                    f"\r\n" + "x" * 2000 + "\r\n").encode()
            if i == 150:
                os.kill(self.proc.pid, signal.SIGKILL)
            try:
                client.sendmail("rep@example.net", [f"dispatch@{FQDN}"], data)
            except (smtplib.SMTPException, OSError):
                break
            acked.append(f"crash-{i}".encode())
        self.proc.wait(timeout=30)
        self.assertGreaterEqual(len(acked), 100)
        self.assertLess(len(acked), 400, "the kill should have cut the stream")

        self.start()
        wait_until(lambda: set(acked) <= set(self.forwarded_ids()), 120,
                   "every acknowledged message to be forwarded")
        spool_new = os.path.join(self.dir, "spool", "new")
        wait_until(lambda: not os.listdir(spool_new), 60, "the spool to drain")
        ids = self.forwarded_ids()
        self.assertEqual(len(ids), len(set(ids)), "a message was forwarded twice")
        self.assertEqual(os.listdir(os.path.join(self.dir, "spool", "failed")), [])
