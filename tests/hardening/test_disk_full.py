"""
The spool's disk is full.

The ingress must answer 451 4.3.0 (never 250) for a copy it could not make
durable, leave no partial file behind, and keep every message it already
acknowledged intact. The failure is injected where the spool meets the
disk (the write, the file fsync, the directory fsync, the writer thread),
and, when the test runs as root, for real on a 1 MiB tmpfs.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile

from twisted.internet import defer
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.ingress import FQDN, connect, replies
from trackermail.errors import TemporaryFailure
from trackermail.ingress import spool_writer as spool_module
from trackermail.ingress.lmtp import LMTPIngress
from trackermail.ingress.smtp import SMTPIngress
from trackermail.ingress.spool import Spool
from trackermail.processing import SpoolWatcher

F = FQDN.encode()
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def sync_runner(f, *args):
    return defer.maybeDeferred(f, *args)


def message(n: int, size: int = 0) -> bytes:
    body = b"x" * 70 + b"\r\n"
    lines = body * (size // len(body))
    return (b"Subject: message %d\r\nMessage-ID: <m%d@example.net>\r\n\r\nbody %d\r\n"
            % (n, n, n)) + lines


def transaction(n: int, rcpts=(f"control@{FQDN}",), hello=b"LHLO", size: int = 0) -> bytes:
    lines = [hello + b" mta.example", b"MAIL FROM:<sender@example.net>"]
    lines += [b"RCPT TO:<" + r.encode() + b">" for r in rcpts]
    lines.append(b"DATA")
    return b"\r\n".join(lines) + b"\r\n" + message(n, size) + b".\r\n"


class DiskFullTests(SynchronousTestCase):
    def make_spool(self, path=None, **kw):
        spool = Spool(path or self.mktemp(), runner=kw.pop("runner", sync_runner), **kw)
        self.addCleanup(spool.close)
        return spool

    def session(self, spool, protocol_class=LMTPIngress):
        proto, t, _, _ = connect(protocol_class=protocol_class, spool=spool,
                                 max_size=10 * 1024 * 1024)
        replies(t)
        return proto, t

    def send(self, proto, t, data) -> list[bytes]:
        proto.dataReceived(data)
        return replies(t)

    def stored(self, spool) -> dict[str, bytes]:
        out = {}
        for name in spool.list_new():
            with open(spool.new_path(name), "rb") as f:
                out[name] = f.read()
        return out

    def assert_clean_tmp(self, spool):
        self.assertEqual(os.listdir(spool.dir("tmp")), [])

    def test_write_enospc_lmtp(self):
        """LMTP: a write failing with ENOSPC gets 451 4.3.0; the message stored before is intact."""
        spool = self.make_spool(fsync=True, sync_method="fsync")
        proto, t = self.session(spool)
        first = self.send(proto, t, transaction(1))
        self.assertTrue(first[-1].startswith(b"250 2.0.0 <control@" + F + b"> Ok: queued as"))
        before = self.stored(spool)

        def full(fd, *chunks):
            raise ENOSPC

        self.patch(spool_module, "_write_all", full)
        lines = self.send(proto, t, transaction(2)[len(b"LHLO mta.example\r\n"):])
        self.assertEqual(lines[-1], b"451 4.3.0 <control@" + F + b"> Error: queue file write error")
        self.assertFalse(any(line.startswith(b"250 2.0.0 <") for line in lines))
        self.assertEqual(self.stored(spool), before)
        self.assertIn(b"Message-ID: <m1@example.net>", list(before.values())[0])
        self.assert_clean_tmp(spool)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_write_enospc_smtp(self):
        """ESMTP: a write failing with ENOSPC gets 451 4.3.0 and the session goes on."""
        spool = self.make_spool(fsync=False)
        proto, t = self.session(spool, SMTPIngress)
        self.patch(spool_module, "_write_all", lambda fd, *c: (_ for _ in ()).throw(ENOSPC))
        lines = self.send(proto, t, transaction(1, hello=b"EHLO") + b"NOOP\r\n")
        self.assertEqual(lines[-2:], [b"451 4.3.0 Error: queue file write error",
                                      b"250 2.0.0 Ok"])
        self.assertEqual(self.stored(spool), {})
        self.assert_clean_tmp(spool)
        self.flushLoggedErrors(OSError)

    def test_fsync_enospc(self):
        """Write-back failing at fsync (delayed allocation, NFS) gets 451; no file is left."""
        spool = self.make_spool(fsync=True, sync_method="fsync")
        proto, t = self.session(spool)
        real_fsync = os.fsync

        def fsync(fd):
            if os.path.dirname(os.readlink(f"/proc/self/fd/{fd}")) == spool.dir("tmp"):
                raise ENOSPC
            return real_fsync(fd)

        self.patch(spool_module.os, "fsync", fsync)
        lines = self.send(proto, t, transaction(1))
        self.assertEqual(lines[-1], b"451 4.3.0 <control@" + F + b"> Error: queue file write error")
        self.assertEqual(self.stored(spool), {})
        self.assert_clean_tmp(spool)
        self.flushLoggedErrors(OSError)

    def test_syncfs_enospc(self):
        """With group commit by syncfs, a write-back error fails every copy of the batch with 451."""
        import ctypes

        spool = self.make_spool(fsync=True, sync_method="syncfs")
        proto, t = self.session(spool)

        def syncfs(fd):
            ctypes.set_errno(errno.ENOSPC)
            return -1

        self.patch(spool_module, "_syncfs", syncfs)
        lines = self.send(proto, t, transaction(
            1, rcpts=(f"control@{FQDN}", f"dispatch@{FQDN}")))
        self.assertEqual(lines[-2:], [
            b"451 4.3.0 <control@" + F + b"> Error: queue file write error",
            b"451 4.3.0 <dispatch@" + F + b"> Error: queue file write error",
        ])
        self.assertEqual(self.stored(spool), {})
        self.assert_clean_tmp(spool)
        [first] = self.flushLoggedErrors(OSError)
        self.assertEqual(first.value.errno, errno.ENOSPC)

    def test_directory_fsync_fails(self):
        """When the new/ entry cannot be made durable, the copy is taken back and 451 sent."""
        spool = self.make_spool(fsync=True, sync_method="fsync")
        proto, t = self.session(spool)

        def fsync_dir(path):
            raise OSError(errno.EIO, "Input/output error")

        self.patch(spool_module, "fsync_dir", fsync_dir)
        lines = self.send(proto, t, transaction(1))
        self.assertEqual(lines[-1], b"451 4.3.0 <control@" + F + b"> Error: queue file write error")
        self.assertEqual(self.stored(spool), {})
        self.assert_clean_tmp(spool)
        self.flushLoggedErrors(OSError)

    def test_writer_thread_fails(self):
        """A failure of the whole batch writer gives every recipient 451."""
        spool = self.make_spool(runner=lambda f, *a: defer.fail(ENOSPC))
        proto, t = self.session(spool)
        lines = self.send(proto, t, transaction(
            1, rcpts=(f"control@{FQDN}", f"dispatch@{FQDN}")))
        self.assertEqual(lines[-2:], [
            b"451 4.3.0 <control@" + F + b"> Error: queue file write error",
            b"451 4.3.0 <dispatch@" + F + b"> Error: queue file write error",
        ])
        self.flushLoggedErrors(OSError)

    def test_disk_fills_up_during_a_session(self):
        """As a simulated disk runs out, replies turn from 250 to 451; each 250 has its full file."""
        spool = self.make_spool(fsync=False)
        proto, t = self.session(spool)
        budget = [20_000]
        real_write_all = spool_module._write_all

        def write_all(fd, *chunks):
            size = sum(len(c) for c in chunks)
            if size > budget[0]:
                # A short write, then the disk is full: the file is partial.
                os.write(fd, b"".join(chunks)[: budget[0]])
                budget[0] = 0
                raise ENOSPC
            budget[0] -= size
            return real_write_all(fd, *chunks)

        self.patch(spool_module, "_write_all", write_all)
        outcomes = {}
        self.send(proto, t, b"LHLO mta.example\r\n")
        for n in range(1, 9):
            lines = self.send(proto, t, transaction(n, size=3000)[len(b"LHLO mta.example\r\n"):])
            outcomes[n] = int(lines[-1][:3])
        self.assertIn(250, outcomes.values())
        self.assertIn(451, outcomes.values())
        accepted = sorted(n for n, code in outcomes.items() if code == 250)
        self.assertEqual(accepted, list(range(1, len(accepted) + 1)),
                         "once full, nothing more is acknowledged")
        stored = self.stored(spool)
        self.assertEqual(len(stored), len(accepted))
        for n, data in zip(accepted, (stored[k] for k in sorted(stored))):
            self.assertIn(b"Message-ID: <m%d@example.net>" % n, data)
            self.assertTrue(data.endswith(message(n, 3000).replace(b"\r\n", b"\n")))
        self.assert_clean_tmp(spool)
        self.flushLoggedErrors(OSError)

    def test_lmtp_failure_defers_every_recipient(self):
        """LMTP: a transaction is one file, so a failed write defers all its recipients."""
        spool = self.make_spool(fsync=False)
        proto, t = self.session(spool)
        self.patch(spool_module, "_write_all", lambda fd, *c: (_ for _ in ()).throw(ENOSPC))
        lines = self.send(proto, t, transaction(
            1, rcpts=(f"control@{FQDN}", f"dispatch@{FQDN}")))
        self.assertEqual(lines[-2:], [
            b"451 4.3.0 <control@" + F + b"> Error: queue file write error",
            b"451 4.3.0 <dispatch@" + F + b"> Error: queue file write error",
        ])
        self.assertEqual(self.stored(spool), {})
        self.assert_clean_tmp(spool)
        self.flushLoggedErrors(OSError)

    def test_thousand_recipients_while_the_disk_fills(self):
        """
        ESMTP, 1,000 recipients, the disk full: 451 and nothing at all in
        new/, so the client's retry cannot produce duplicates.
        """
        spool = self.make_spool(fsync=False)
        proto, t = self.session(spool, SMTPIngress)
        self.patch(spool_module, "_write_all", lambda fd, *c: (_ for _ in ()).throw(ENOSPC))
        rcpts = [f"dispatch+pkg{i}@{FQDN}" for i in range(1000)]
        lines = self.send(proto, t, transaction(1, rcpts=rcpts, hello=b"EHLO"))
        self.assertEqual(lines[-1], b"451 4.3.0 Error: queue file write error")
        self.assertEqual(self.stored(spool), {})
        self.assert_clean_tmp(spool)
        self.flushLoggedErrors(OSError)

    def test_no_room_refused_at_mail(self):
        """Without room for the announced size (and a margin), MAIL gets 452 4.3.1."""
        spool = self.make_spool(fsync=False)
        self.patch(spool, "free_bytes", lambda: 3 * 1024 * 1024)
        proto, t = self.session(spool, SMTPIngress)
        lines = self.send(proto, t, b"EHLO x\r\nMAIL FROM:<a@b.c> SIZE=5000000\r\n"
                                    b"MAIL FROM:<a@b.c> SIZE=1000\r\n")
        self.assertEqual(lines[-2:], [b"452 4.3.1 Insufficient system storage", b"250 2.1.0 Ok"])

    def test_bookkeeping_on_full_disk_loses_nothing(self):
        """When even the retry state cannot be written, the message stays in new/ for the next scan."""
        from twisted.internet import task

        spool = self.make_spool(fsync=False)
        path = spool.deliver_sync(message(1), f"control@{FQDN}", "a@example.net")
        clock = task.Clock()
        watcher = SpoolWatcher(spool, lambda p: defer.fail(TemporaryFailure("store down")),
                               clock=clock, rescan_interval=60, notifier_factory=_NoNotifier)

        def full(name, state):
            raise ENOSPC

        self.patch(spool, "write_retry_state", full)
        watcher.startService()
        self.addCleanup(watcher.stopService)
        self.assertTrue(os.path.exists(path))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        # Space comes back: the next scan processes it.
        spool.write_retry_state = Spool.write_retry_state.__get__(spool)
        watcher.process = lambda p: defer.succeed(None)
        clock.advance(60)
        self.assertFalse(os.path.exists(path))


class _NoNotifier:
    def startReading(self):
        pass

    def watch(self, *a, **kw):
        pass

    def loseConnection(self):
        pass


class RealTmpfsTests(SynchronousTestCase):
    """
    A real full file system: a 1 MiB tmpfs (needs root and mount(8); skipped
    otherwise).
    """

    def setUp(self):
        if os.geteuid() != 0 or shutil.which("mount") is None:
            raise SkipTest("mounting a tmpfs needs root and mount(8)")
        self.mnt = tempfile.mkdtemp(prefix="trackermail-full-")
        self.addCleanup(os.rmdir, self.mnt)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700",
                                 "trackermail-test", self.mnt],
                                capture_output=True, timeout=30)
        if result.returncode != 0:
            raise SkipTest("cannot mount a tmpfs: "
                           + result.stderr.decode("utf-8", "replace").strip())
        self.addCleanup(subprocess.run, ["umount", "-l", self.mnt],
                        capture_output=True, timeout=30)

    def test_full_tmpfs(self):
        """On a really full file system the ingress answers 451, keeps what it acknowledged, and recovers."""
        spool = Spool(os.path.join(self.mnt, "spool"), fsync=True, runner=sync_runner)
        self.addCleanup(spool.close)
        filler = os.path.join(self.mnt, "filler")
        with open(filler, "wb") as f:
            f.write(b"\0" * (1024 * 1024 - 200 * 1024))
        proto, t, _, _ = connect(protocol_class=LMTPIngress, spool=spool,
                                 max_size=10 * 1024 * 1024, space_margin=0)
        replies(t)
        proto.dataReceived(b"LHLO mta.example\r\n")
        replies(t)
        codes = []
        for n in range(1, 11):
            proto.dataReceived(transaction(n, size=40_000)[len(b"LHLO mta.example\r\n"):])
            codes.append(int(replies(t)[-1][:3]))
        self.assertIn(250, codes)
        self.assertIn(451, codes)
        accepted = [n for n, code in zip(range(1, 11), codes) if code == 250]
        names = spool.list_new()
        self.assertEqual(len(names), len(accepted))
        for n, name in zip(accepted, names):
            with open(spool.new_path(name), "rb") as f:
                data = f.read()
            self.assertIn(b"Message-ID: <m%d@example.net>" % n, data)
            self.assertTrue(data.endswith(message(n, 40_000).replace(b"\r\n", b"\n")))
        self.assertEqual(os.listdir(spool.dir("tmp")), [])
        self.flushLoggedErrors(OSError)

        # The operator frees space: mail is accepted again.
        os.unlink(filler)
        proto.dataReceived(transaction(99, size=40_000)[len(b"LHLO mta.example\r\n"):])
        self.assertTrue(replies(t)[-1].startswith(b"250 2.0.0 <control@"))
        self.assertEqual(len(spool.list_new()), len(accepted) + 1)
