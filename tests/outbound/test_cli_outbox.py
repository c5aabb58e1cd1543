"""
The outbox commands as an operator runs them: C{trackermail outbox},
C{trackermail status} and C{trackermail requeue outbox [--failed] [ID ...]}.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from trackermail.store.outbox import Result, claim_due, enqueue, record_results
from trackermail.store.outbox_report import delivery_rows
from trackermail.store.sqlite import MemoryStore


def run(*args):
    return subprocess.run([sys.executable, "-m", "trackermail.cli", *args],
                          capture_output=True, text=True, timeout=120)


class OutboxCommandTests(SynchronousTestCase):
    def setUp(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "t.sqlite")
        self.db = f"sqlite:///{path}"
        self.store = MemoryStore(path)
        self.addCleanup(self.store.close)
        self.successResultOf(self.store.migrate())
        now = time.time()
        rcpts = [(f"u{i}@d{i}.example", f"bounces+{i}@t.example") for i in range(6)]
        self.successResultOf(self.store.run(enqueue, b"Subject: x\n\nx\n", rcpts, now))
        d = self.successResultOf(self.store.run(claim_due, "sqlite", "node-a:/var/spool", now,
                                                6, 30))
        self.ids = [x.id for x in d]
        self.successResultOf(self.store.run(record_results, "node-a:/var/spool", now, [
            Result(d[0], "queued", 554, "5.7.1 <u0@d0.example>: Relay access denied", now + 600),
            Result(d[1], "queued", 554, "5.7.1 <u1@d1.example>: Relay access denied", now + 900),
            Result(d[2], "failed", 550, "5.1.1 <u2@d2.example>: unknown user"),
            Result(d[3], "sent", 250),
            Result(d[4], "queued", 421, "4.4.1 cannot connect to mx:25", now - 5),
        ], None))

    def cli(self, *args):
        return run("--database", self.db, *args)

    def states(self):
        rows = self.successResultOf(self.store.run(delivery_rows))
        return [r[2] for r in rows]

    def test_outbox(self):
        """outbox shows counts, claims by node with lease expiry, and deferrals grouped by error."""
        result = self.cli("outbox")
        self.assertEqual(result.returncode, 0, result.stderr)
        out = result.stdout
        for line in ("queued   3\n", "sending  1\n", "sent     1\n", "failed   1\n",
                     "due now  1\n"):
            self.assertIn(line, out)
        self.assertRegex(out, r"node-a:/var/spool: 1 \(in \d+s\)")
        self.assertRegex(out, r"#%d u5@d5\.example on node-a:/var/spool, attempt 1, lease ends"
                              r" in \d+s" % self.ids[5])
        self.assertRegex(out, r"\n +2  554 5\.7\.1 <\.\.\.>: Relay access denied \(in (9|10)m\)")
        self.assertRegex(out, r"\n +1  421 4\.4\.1 cannot connect to mx:25 \(\d+s ago\)")
        self.assertIn("failed, by last error:\n        1  550 5.1.1 <...>: unknown user", out)

    def test_status(self):
        """status prints the outbox summary with the claims and the deferrals by error."""
        result = self.cli("status")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("outbox queued 3, sending 1, sent 1, failed 1, due now 1", result.stdout)
        self.assertIn("554 5.7.1 <...>: Relay access denied", result.stdout)

    def test_requeue_deferred(self):
        """requeue outbox makes every deferred delivery due now; failed ones stay failed."""
        result = self.cli("requeue", "outbox")
        self.assertEqual((result.returncode, result.stdout),
                         (0, "requeued 2 deferred deliveries\n"))
        self.assertIn("due now  3\n", self.cli("outbox").stdout)
        self.assertEqual(self.states()[2], "failed")

    def test_requeue_failed_by_id(self):
        """requeue outbox --failed ID puts that failed delivery back in the queue."""
        result = self.cli("requeue", "outbox", "--failed", str(self.ids[2]))
        self.assertEqual((result.returncode, result.stdout),
                         (0, "requeued 1 deferred or failed deliveries\n"))
        self.assertEqual(self.states()[2], "queued")

    def test_requeue_unknown_ids(self):
        """Ids that are not deferred are named in a one-line error (exit 1)."""
        result = self.cli("requeue", "outbox", str(self.ids[0]), str(self.ids[3]), "99999")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr,
                         f"trackermail: not deferred: #{self.ids[3]}, #99999\n")
        self.assertIn("requeued 1 deferred deliveries", result.stdout)

    def test_requeue_bad_id(self):
        """A delivery id that is not a number is a one-line error."""
        result = self.cli("requeue", "outbox", "abc")
        self.assertEqual(result.returncode, 1)
        self.assertIn("delivery ids are numbers", result.stderr)

    def test_failed_flag_is_for_the_outbox(self):
        """--failed with failed/ or broken/ is refused with a one-line error."""
        result = self.cli("requeue", "broken", "--failed")
        self.assertEqual(result.returncode, 1)
        self.assertIn("--failed is for the outbox", result.stderr)
