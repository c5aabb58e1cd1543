"""
Crash safety of the whole tracker: a twistd child killed with SIGKILL in
the middle of a stream of LMTP deliveries loses no message that got a 250,
and processing after the restart forwards nothing twice.
"""

import os
import re
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

FQDN = "tracker.example.org"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
MSGID = re.compile(rb"^Message-ID: <(crash-\d+)@example\.net>", re.M | re.I)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class CrashTests(SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.db = os.path.join(self.dir, "tracker.sqlite")
        self.port = free_port()
        self.config = os.path.join(self.dir, "tracker.toml")
        with open(self.config, "w") as f:
            f.write(
                f'[tracker]\nfqdn = "{FQDN}"\nsecret_key = "{"k" * 40}"\n'
                f'[spool]\npath = "{self.dir}/spool"\nrescan_interval = 1\n'
                f'[database]\nurl = "sqlite:///{self.db}"\n'
                f"[smtp]\nlisten = []\n"
                f'[lmtp]\nlisten = ["tcp:{self.port}:interface=127.0.0.1"]\n'
                f"[outbound]\nenabled = false\n"
            )
        cli = [sys.executable, "-m", "trackermail.cli", "--config", self.config]
        subprocess.run(cli + ["migrate"], check=True, capture_output=True, timeout=60)
        subprocess.run(cli + ["subscribe", "pkg", "jane@example.org"], check=True,
                       capture_output=True, timeout=60)
        self.proc = None

    def start(self):
        log = open(os.path.join(self.dir, "twistd.log"), "ab")
        self.addCleanup(log.close)
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "tracker", "--config", self.config],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        self.addCleanup(self.stop)

        def listening():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(listening, 60, "the tracker to listen")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

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
