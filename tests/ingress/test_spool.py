"""
Tests of the durable spool and its watcher.
"""

from __future__ import annotations

import errno
import json
import os

from twisted.internet import defer, task
from twisted.internet.inotify import IN_MOVED_TO
from twisted.python.filepath import FilePath
from twisted.python.runtime import platform
from twisted.trial.unittest import SynchronousTestCase, TestCase

from trackermail.errors import PermanentFailure, TemporaryFailure
from trackermail.ingress import spool_writer as spool_module
from trackermail.ingress.spool import (
    Envelope,
    Spool,
    envelope_sender_of,
    new_queue_id,
    open_message,
)
from trackermail.processing import SpoolWatcher


def sync_runner(f, *args):
    return defer.maybeDeferred(f, *args)


class ManualRunner:
    """
    Holds each batch until the test runs it, like a slow disk.
    """

    def __init__(self):
        self.batches = []

    def __call__(self, f, *args):
        d = defer.Deferred()
        self.batches.append((f, args, d))
        return d

    def run_next(self):
        f, args, d = self.batches.pop(0)
        try:
            result = f(*args)
        except BaseException:
            d.errback()
        else:
            d.callback(result)


class SpoolTests(SynchronousTestCase):
    def make(self, **kw):
        kw.setdefault("runner", sync_runner)
        s = Spool(self.mktemp(), reactor=task.Clock(), **kw)
        self.addCleanup(s.close)
        return s

    def test_layout(self):
        """A new spool has tmp/, new/, failed/, broken/ and retry/."""
        s = self.make()
        self.assertEqual(sorted(os.listdir(s.path)), ["broken", "failed", "new", "retry", "tmp"])

    def test_deliver(self):
        """A delivered message is in new/ behind its envelope line, and tmp/ is empty."""
        s = self.make()
        path = self.successResultOf(s.deliver(b"Subject: x\n\nbody\n", "control@t.org", "a@b.c"))
        self.assertEqual(os.path.dirname(path), s.dir("new"))
        message = open_message(path)
        self.assertEqual(message.envelope.recipients, ("control@t.org",))
        self.assertEqual(message.envelope.sender, "a@b.c")
        self.assertEqual(message.envelope.queue_id, os.path.basename(path))
        self.assertEqual(message.head(100), b"Subject: x\n\nbody\n")
        with open(path, "rb") as f:
            self.assertTrue(f.readline().startswith(b"TRACKERMAIL-SPOOL/1 {"))
        self.assertEqual(os.listdir(s.dir("tmp")), [])

    def test_null_and_no_sender(self):
        """The null sender is kept as "", an unknown one as None."""
        s = self.make()
        p1 = self.successResultOf(s.deliver(b"x\n", "control@t.org", ""))
        p2 = self.successResultOf(s.deliver(b"x\n", "control@t.org", None))
        self.assertEqual(open_message(p1).envelope.sender, "")
        self.assertIsNone(open_message(p2).envelope.sender)

    def test_header_injection(self):
        """A recipient with a line break stays one envelope field: it cannot add lines."""
        s = self.make()
        path = self.successResultOf(s.deliver(b"Subject: x\n\n", "a@b\nBcc: x@y", None))
        message = open_message(path)
        self.assertEqual(message.envelope.recipients, ("a@b\nBcc: x@y",))
        self.assertEqual(message.head(100), b"Subject: x\n\n")

    def test_unique_names(self):
        """Every delivery gets its own file."""
        s = self.make()
        for _ in range(20):
            s.deliver(b"x\n", "control@t.org", None)
        self.assertEqual(len(os.listdir(s.dir("new"))), 20)

    def test_fsync_calls(self):
        """With fsync on, the file and new/ are synced before the delivery fires."""
        s = self.make(sync_method="fsync")
        synced = []
        real = os.fsync
        self.patch(spool_module.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
        self.successResultOf(s.deliver(b"x\n", "control@t.org", None))
        self.assertEqual(len(synced), 2)

    def test_write_error(self):
        """A full disk fails the delivery and leaves nothing behind."""
        s = self.make()

        def full(fd, chunks):
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(spool_module.os, "writev", full)
        f = self.failureResultOf(s.deliver(b"x\n", "control@t.org", None), OSError)
        self.assertEqual(f.value.errno, errno.ENOSPC)
        self.assertEqual(os.listdir(s.dir("tmp")) + os.listdir(s.dir("new")), [])

    def test_fsync_error(self):
        """An fsync error fails every delivery of the batch and keeps them out of new/."""
        s = self.make(sync_method="fsync")

        def broken(fd):
            raise OSError(errno.EIO, "Input/output error")

        self.patch(spool_module.os, "fsync", broken)
        self.failureResultOf(s.deliver(b"x\n", "control@t.org", None), OSError)
        self.assertEqual(os.listdir(s.dir("tmp")) + os.listdir(s.dir("new")), [])

    def test_directory_fsync_error(self):
        """If new/ cannot be synced the message is taken back and the delivery fails."""
        s = self.make()
        self.patch(spool_module, "fsync_dir", lambda path: (_ for _ in ()).throw(
            OSError(errno.EIO, "Input/output error")))
        self.failureResultOf(s.deliver(b"x\n", "control@t.org", None), OSError)
        self.assertEqual(os.listdir(s.dir("new")), [])

    def test_group_commit(self):
        """Deliveries arriving while a batch is on disk share the next batch, and none fires early."""
        runner = ManualRunner()
        s = self.make(runner=runner)
        d1 = s.deliver(b"1\n", "control@t.org", None)
        d2 = s.deliver(b"2\n", "control@t.org", None)
        d3 = s.deliver(b"3\n", "control@t.org", None)
        self.assertEqual(len(runner.batches), 1)
        for d in (d1, d2, d3):
            self.assertNoResult(d)
        runner.run_next()
        p1 = self.successResultOf(d1)
        self.assertTrue(os.path.exists(p1))
        self.assertNoResult(d2)
        self.assertNoResult(d3)
        self.assertEqual(os.listdir(s.dir("new")), [os.path.basename(p1)])
        self.assertEqual(len(runner.batches), 1)
        self.assertEqual(len(runner.batches[0][1][0]), 2)
        runner.run_next()
        self.assertEqual(open(self.successResultOf(d3), "rb").read()[-2:], b"3\n")
        self.assertTrue(os.path.exists(self.successResultOf(d2)))
        self.assertEqual(s.batches, 2)
        self.assertEqual(runner.batches, [])

    def test_group_commit_syncfs(self):
        """A batch written with syncfs is durable and complete."""
        if spool_module._syncfs is None:
            raise self.skipTest("no syncfs on this platform")
        runner = ManualRunner()
        s = self.make(runner=runner, sync_method="syncfs")
        ds = [s.deliver(b"%d\n" % i, "control@t.org", None) for i in range(5)]
        runner.run_next()
        runner.run_next()
        self.assertEqual(len(set(self.successResultOf(d) for d in ds)), 5)

    def test_batch_crash(self):
        """An unexpected error in the writer fails its batch, and later deliveries still work."""
        runner = ManualRunner()
        s = self.make(runner=runner)
        d1 = s.deliver(b"1\n", "control@t.org", None)
        d2 = s.deliver(b"2\n", "control@t.org", None)
        f, args, d = runner.batches.pop(0)
        d.errback(RuntimeError("boom"))
        self.failureResultOf(d1, RuntimeError)
        runner.run_next()
        self.successResultOf(d2)

    def test_deliver_sync(self):
        """The blocking delivery returns the path of a durable file."""
        s = self.make()
        path = s.deliver_sync(b"x\n", "control@t.org", "a@b.c")
        self.assertTrue(path.startswith(s.dir("new")))

    def test_requeue(self):
        """Parked messages go back to new/ without their reason or retry state."""
        s = self.make()
        name = os.path.basename(s.deliver_sync(b"x\n", "control@t.org", None))
        s.write_retry_state(name, {"attempts": 6, "next": 0})
        s.park(name, "broken", "gave up")
        self.assertEqual(s.list_parked("broken"), [name])
        self.assertEqual(s.requeue("broken"), [name])
        self.assertEqual(s.list_new(), [name])
        self.assertEqual(os.listdir(s.dir("broken")), [])
        self.assertIsNone(s.read_retry_state(name))


class FakeNotifier:
    def __init__(self, log):
        self.log = log
        self.callbacks = []
        self.lost = False

    def startReading(self):
        self.log.append("startReading")

    def watch(self, path, mask, callbacks):
        self.log.append(("watch", path.path, mask))
        self.callbacks.extend(callbacks)

    def loseConnection(self):
        self.lost = True

    def notify(self, path):
        for cb in self.callbacks:
            cb(None, FilePath(os.fsencode(path)), IN_MOVED_TO)


class Processor:
    """
    process() double: each call returns a Deferred the test fires.
    """

    def __init__(self):
        self.calls = []

    def __call__(self, path):
        d = defer.Deferred()
        self.calls.append((os.path.basename(path), d))
        return d

    def names(self):
        return [n for n, _ in self.calls]


class SpoolWatcherTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.spool = Spool(self.mktemp(), fsync=False, reactor=self.clock, runner=sync_runner)
        self.events = []
        self.notifier = None
        self.process = Processor()

    def notifier_factory(self):
        self.notifier = FakeNotifier(self.events)
        return self.notifier

    def watcher(self, **kw):
        original = self.spool.list_new

        def list_new():
            self.events.append("scan")
            return original()

        self.spool.list_new = list_new
        kw.setdefault("retry_delays", (150, 300, 600, 1800, 3600, 7200))
        w = SpoolWatcher(self.spool, self.process, clock=self.clock,
                         notifier_factory=self.notifier_factory, **kw)
        return w

    def put(self, body=b"x\n"):
        return os.path.basename(self.spool.deliver_sync(body, "control@t.org", None))

    def test_watch_before_scan(self):
        """The watch on new/ is added before the start-up scan."""
        w = self.watcher()
        w.startService()
        self.assertEqual(self.events[0], "startReading")
        self.assertEqual(self.events[1][0], "watch")
        self.assertTrue(self.events[1][1].endswith(b"/new"))
        self.assertEqual(self.events[2], "scan")

    def test_startup_scan_and_success(self):
        """Messages already in new/ are processed at start and removed when done."""
        names = [self.put() for _ in range(3)]
        w = self.watcher()
        w.startService()
        self.assertEqual(self.process.names(), names)
        for _, d in self.process.calls:
            d.callback(None)
        self.assertEqual(self.spool.list_new(), [])
        self.successResultOf(w.when_idle())

    def test_notification_and_dedupe(self):
        """A notified file is processed once, however often it is seen."""
        w = self.watcher()
        w.startService()
        name = self.put()
        self.notifier.notify(self.spool.new_path(name))
        self.notifier.notify(self.spool.new_path(name))
        w.scan()
        self.assertEqual(self.process.names(), [name])

    def test_concurrency_bound(self):
        """No more than `concurrency` messages are processed at once."""
        for _ in range(5):
            self.put()
        w = self.watcher(concurrency=2)
        w.startService()
        self.assertEqual(len(self.process.calls), 2)
        idle = w.when_idle()
        self.process.calls[0][1].callback(None)
        self.assertEqual(len(self.process.calls), 3)
        for i in range(1, 5):
            self.process.calls[i][1].callback(None)
        self.successResultOf(idle)
        self.assertEqual(self.spool.list_new(), [])

    def test_synchronous_processing_many(self):
        """Thousands of messages processed synchronously do not exhaust the stack."""
        for _ in range(1500):
            self.put()
        done = []
        w = SpoolWatcher(self.spool, lambda p: done.append(p), clock=self.clock,
                         notifier_factory=self.notifier_factory)
        w.startService()
        self.assertEqual(len(done), 1500)
        self.assertEqual(self.spool.list_new(), [])

    def test_periodic_rescan(self):
        """A file that arrived without a notification is found by the next rescan."""
        w = self.watcher(rescan_interval=60)
        w.startService()
        name = self.put()
        self.assertEqual(self.process.calls, [])
        self.clock.advance(60)
        self.assertEqual(self.process.names(), [name])

    def test_permanent_failure(self):
        """A permanent failure moves the message to failed/ at once, with the reason."""
        name = self.put()
        w = self.watcher()
        w.startService()
        self.process.calls[0][1].errback(PermanentFailure("no delivery address"))
        self.assertEqual(self.spool.list_parked("failed"), [name])
        with open(os.path.join(self.spool.dir("failed"), name + ".reason")) as f:
            self.assertEqual(f.read(), "PermanentFailure: no delivery address\n")
        self.assertEqual(self.spool.list_new(), [])

    def test_retry_schedule_then_broken(self):
        """Temporary failures are retried after 150, 300, 600, 1800, 3600, 7200 s, then broken/."""
        name = self.put()
        w = self.watcher()
        w.startService()
        for delay in (150, 300, 600, 1800, 3600, 7200):
            self.process.calls[-1][1].errback(TemporaryFailure("database down"))
            count = len(self.process.calls)
            self.assertEqual(w.waiting_for_retry, [name])
            self.clock.advance(delay - 1)
            self.assertEqual(len(self.process.calls), count)
            self.clock.advance(1)
            self.assertEqual(len(self.process.calls), count + 1)
        self.process.calls[-1][1].errback(TemporaryFailure("database down"))
        self.assertEqual(self.spool.list_parked("broken"), [name])
        with open(os.path.join(self.spool.dir("broken"), name + ".reason")) as f:
            self.assertIn("TemporaryFailure: database down", f.read())
        self.assertEqual(os.listdir(self.spool.dir("retry")), [])

    def test_unexpected_error_is_temporary(self):
        """An unexpected exception is logged and retried like a temporary failure."""
        name = self.put()
        w = self.watcher()
        w.startService()
        self.process.calls[0][1].errback(ZeroDivisionError("oops"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.spool.read_retry_state(name)["attempts"], 1)
        self.assertEqual(w.waiting_for_retry, [name])

    def test_retry_state_survives_restart(self):
        """After a restart a failed message waits for its scheduled time, counting on."""
        name = self.put()
        w = self.watcher()
        w.startService()
        self.process.calls[0][1].errback(TemporaryFailure("db"))
        self.clock.advance(100)
        self.successResultOf(w.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        w2 = self.watcher()
        w2.startService()
        self.assertEqual(len(self.process.calls), 1)
        self.clock.advance(50)
        self.assertEqual(len(self.process.calls), 2)
        self.process.calls[1][1].errback(TemporaryFailure("db"))
        self.assertEqual(self.spool.read_retry_state(name)["attempts"], 2)
        self.assertEqual(self.spool.read_retry_state(name)["next"], 150 + 300)

    def test_due_retry_runs_at_start(self):
        """A message whose retry time passed while stopped is processed at start."""
        name = self.put()
        self.spool.write_retry_state(name, {"attempts": 3, "next": 10})
        self.clock.advance(20)
        w = self.watcher()
        w.startService()
        self.assertEqual(self.process.names(), [name])

    def test_success_after_retry_clears_state(self):
        """A message that succeeds on retry leaves no retry state behind."""
        name = self.put()
        w = self.watcher()
        w.startService()
        self.process.calls[0][1].errback(TemporaryFailure("db"))
        self.clock.advance(150)
        self.process.calls[1][1].callback(None)
        self.assertIsNone(self.spool.read_retry_state(name))
        self.assertEqual(self.spool.list_new(), [])

    def test_stop_waits_for_in_flight(self):
        """Stopping waits for messages being processed and starts no new ones."""
        self.put()
        self.put()
        w = self.watcher(concurrency=1)
        w.startService()
        d = w.stopService()
        self.assertNoResult(d)
        self.process.calls[0][1].callback(None)
        self.successResultOf(d)
        self.assertEqual(len(self.process.calls), 1)
        self.assertTrue(self.notifier.lost)

    def test_vanished_file_skipped(self):
        """A file removed before its turn is skipped."""
        w = self.watcher()
        w.startService()
        self.notifier.notify(self.spool.new_path("gone"))
        self.assertEqual(self.process.calls, [])
        self.successResultOf(w.when_idle())

    def test_orphan_retry_state_removed(self):
        """Retry state of a message that no longer exists is cleaned up by a scan."""
        self.spool.write_retry_state("ghost", {"attempts": 1, "next": 0})
        w = self.watcher()
        w.startService()
        self.assertEqual(os.listdir(self.spool.dir("retry")), [])


class RealINotifyTests(TestCase):
    if not platform.supportsINotify():
        skip = "inotify is not available on this platform"

    def test_rename_into_new_is_processed(self):
        """A file renamed into new/ by another writer is processed through inotify."""
        from twisted.internet import reactor

        spool = Spool(self.mktemp(), reactor=reactor)
        seen = defer.Deferred()
        w = SpoolWatcher(spool, lambda path: seen.callback(path), clock=reactor,
                         rescan_interval=0)
        w.startService()
        self.addCleanup(w.stopService)
        tmp = os.path.join(spool.dir("tmp"), "dropped")
        with open(tmp, "wb") as f:
            f.write(b"Delivered-To: control@t.org\n\nx\n")
        os.rename(tmp, spool.new_path("dropped"))
        return seen.addCallback(self.assertEqual, spool.new_path("dropped"))


class RetryStateFormatTests(SynchronousTestCase):
    def test_garbage_state(self):
        """A corrupt retry state file counts as no state."""
        s = Spool(self.mktemp(), runner=sync_runner, reactor=task.Clock())
        with open(os.path.join(s.dir("retry"), "m"), "w") as f:
            f.write("{not json")
        self.assertIsNone(s.read_retry_state("m"))
        s.write_retry_state("m", {"attempts": 1, "next": 5})
        with open(os.path.join(s.dir("retry"), "m")) as f:
            self.assertEqual(json.load(f), {"attempts": 1, "next": 5})


class TransactionWriterTests(SynchronousTestCase):
    def make(self):
        s = Spool(self.mktemp(), reactor=task.Clock(), runner=sync_runner,
                  write_runner=sync_runner)
        self.addCleanup(s.close)
        return s

    def envelope(self, *rcpts):
        return Envelope(new_queue_id(), "a@b.c", rcpts or ("control@t.org",))

    def test_big_message_streams_to_tmp(self):
        """A big message is in tmp/ before its commit, and only in new/ after it."""
        s = self.make()
        writer = s.open_transaction(self.envelope())
        for _ in range(10):
            writer.write(b"x" * 100_000 + b"\n")
        self.assertEqual(os.listdir(s.dir("tmp")), [writer.name])
        self.assertLess(writer.pending, spool_module.FLUSH_AT)
        self.assertEqual(os.listdir(s.dir("new")), [])
        path = self.successResultOf(writer.commit())
        self.assertEqual(os.listdir(s.dir("tmp")), [])
        message = open_message(path)
        self.assertEqual(message.size, 10 * 100_001)
        self.assertEqual(b"".join(message.body().chunks(65536)), (b"x" * 100_000 + b"\n") * 10)

    def test_abort_leaves_nothing(self):
        """An aborted transaction leaves no file, even after part of it was written."""
        s = self.make()
        writer = s.open_transaction(self.envelope())
        writer.write(b"y" * 600_000)
        writer.abort()
        self.assertEqual(os.listdir(s.dir("tmp")) + os.listdir(s.dir("new")), [])

    def test_streaming_write_error_fails_the_commit(self):
        """A write error while streaming (disk full) fails the commit; nothing stays."""
        s = self.make()
        self.patch(spool_module, "_write_all", lambda fd, *c: (_ for _ in ()).throw(
            OSError(errno.ENOSPC, "No space left on device")))
        writer = s.open_transaction(self.envelope())
        writer.write(b"y" * 600_000)
        self.failureResultOf(writer.commit(), OSError)
        self.assertEqual(os.listdir(s.dir("tmp")) + os.listdir(s.dir("new")), [])

    def test_envelope_round_trip(self):
        """Recipients, their routes and the sender come back as they were written."""
        from trackermail.routing import route_address

        s = self.make()
        rcpts = ("control@t.org", "dispatch+dpkg_bts@t.org")
        routes = tuple(route_address(r, "t.org", False) for r in rcpts)
        envelope = Envelope(new_queue_id(), "", rcpts, routes, 12.5, "LMTP", "127.0.0.1")
        writer = s.open_transaction(envelope)
        writer.write(b"Subject: x\n\n")
        message = open_message(self.successResultOf(writer.commit()))
        self.assertEqual(message.envelope, envelope)


class OpenMessageTests(SynchronousTestCase):
    def write(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_legacy_spool_file(self):
        """A file of the older spool: its delivery lines are read, not forwarded."""
        message = open_message(self.write(
            b"Return-Path: <a@b.c>\nDelivered-To: control@t.org\nSubject: x\n\nbody\n"))
        self.assertIsNone(message.envelope)
        self.assertEqual(message.delivery_lines, (("Return-Path", "<a@b.c>"),
                                                  ("Delivered-To", "control@t.org")))
        self.assertEqual(message.head(100), b"Subject: x\n\nbody\n")
        self.assertEqual(envelope_sender_of(message), "a@b.c")

    def test_mbox_from_line(self):
        """A leading mbox From line is not part of the message."""
        message = open_message(self.write(b"From a@b.c Mon Jan 1 00:00:00 2024\nSubject: x\n\n"))
        self.assertEqual(message.head(100), b"Subject: x\n\n")

    def test_bad_envelope(self):
        """A spool file whose envelope line is garbage is reported, not misread."""
        from trackermail.ingress.spool import BadSpoolFile

        self.assertRaises(BadSpoolFile, open_message,
                          self.write(b"TRACKERMAIL-SPOOL/1 {not json\nSubject: x\n\n"))

    def test_counts_and_space(self):
        """Counts and the free-space check read the spool without creating anything."""
        from trackermail.ingress.spool import spool_counts, writable_problem

        missing = os.path.join(self.mktemp(), "nowhere")
        self.assertEqual(spool_counts(missing)["new"], (None, None))
        self.assertFalse(os.path.exists(missing))
        s = Spool(self.mktemp(), runner=sync_runner)
        self.addCleanup(s.close)
        self.assertIsNone(writable_problem(s.path, 1024))
        problem = writable_problem(s.path, 2**62)
        self.assertIn("less than a message of the maximum size", problem)
