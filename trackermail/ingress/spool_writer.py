# -*- test-case-name: tests.ingress.test_spool -*-
"""
Writing the spool: a message streams to its file in C{tmp/} while DATA
arrives, and is made durable and visible in C{new/} by a group commit.

A L{TransactionWriter} buffers what the server hands it and, past
C{FLUSH_AT} bytes, writes it out in the spool's writer thread, so memory
never depends on message size; L{TransactionWriter.pending} tells the
server when to stop reading. L{TransactionWriter.commit} joins the next
group commit: the remaining bytes of every waiting message are written,
the files synced together (one C{syncfs}, or C{fsync}s in parallel, which
the file system merges into one journal commit), renamed into C{new/} and
the directory synced once. Only then does the commit's Deferred fire, and
only then does the client get its 250.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

#: Buffered bytes past which a writer writes to its file.
FLUSH_AT = 256 * 1024

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _syncfs = _libc.syncfs
    _syncfs.argtypes = [ctypes.c_int]
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _syncfs = None


def _kernel_reports_syncfs_errors() -> bool:
    # Before Linux 5.8 syncfs() returned 0 even when writeback failed, which
    # would let us answer 250 for bytes that never reached the disk.
    if not sys.platform.startswith("linux") or _syncfs is None:
        return False
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


_SYNCFS_OK = _kernel_reports_syncfs_errors()


class TransactionWriter:
    """
    One message on its way into the spool. C{write} as data arrives, then
    C{commit} (durable, visible) or C{abort} (nothing left behind).
    """

    def __init__(self, committer: "Committer", envelope: Any):
        self.committer = committer
        self.envelope = envelope
        self.name = envelope.queue_id
        self.size = 0
        self.fd: int | None = None
        self.error: BaseException | None = None
        self._buffer: list[bytes] = [envelope.encode()]
        self._buffered = len(self._buffer[0])
        self._writing: Deferred | None = None
        self._writing_bytes = 0
        self._done = False

    @property
    def pending(self) -> int:
        """Bytes handed to the writer that are not in the file yet."""
        return self._buffered + self._writing_bytes

    def write(self, data: bytes) -> None:
        if self._done or not data:
            return
        self._buffer.append(bytes(data))
        self._buffered += len(data)
        self.size += len(data)
        if self._buffered >= FLUSH_AT and self._writing is None and self.error is None:
            self._flush()

    def _flush(self) -> None:
        chunks, self._buffer, self._buffered = self._buffer, [], 0
        self._writing_bytes = sum(len(c) for c in chunks)
        d = self._writing = self.committer.write_runner(self.committer.append, self, chunks)

        def done(result: Any) -> None:
            self._writing = None
            self._writing_bytes = 0
            if isinstance(result, Failure):
                self.error = self.error or result.value
            elif self._buffered >= FLUSH_AT and not self._done and self.error is None:
                self._flush()
            self.committer.drained(self)

        d.addBoth(done)

    def when_written(self) -> Deferred:
        """Fires once no write of this message is running."""
        if self._writing is None:
            return defer.succeed(None)
        d: Deferred = Deferred()
        self._writing.addBoth(lambda result: d.callback(None) or result)
        return d

    def commit(self) -> Deferred:
        """
        Make the message durable and visible: a Deferred firing with its path
        in C{new/}, or failing with the C{OSError} that prevented it (the
        file is then gone).
        """
        self._done = True
        d = self.when_written()
        d.addCallback(lambda _: self.committer.commit(self))
        return d

    def abort(self) -> None:
        """Forget the message: nothing of it stays in the spool."""
        self._done = True
        self._buffer, self._buffered = [], 0
        self.when_written().addCallback(lambda _: self.committer.discard(self))

    def take_buffer(self) -> list[bytes]:
        chunks, self._buffer, self._buffered = self._buffer, [], 0
        return chunks


class Committer:
    """
    The spool's writing machinery: threads, group commits and how data is
    synced (C{sync_method}): C{"fsync"} (one fsync per file, run in
    parallel), C{"syncfs"} (one syncfs for the whole batch; it flushes the
    whole file system, so keep the spool on a file system of its own if
    others write a lot), or C{"auto"}: syncfs for batches of two or more on
    Linux >= 5.8 (where it reports write-back errors), fsync otherwise.
    """

    def __init__(self, spool: Any, sync_method: str = "auto", reactor: Any = None,
                 runner: Callable[..., Deferred] | None = None,
                 write_runner: Callable[..., Deferred] | None = None):
        if sync_method not in ("auto", "fsync", "syncfs"):
            raise ValueError(f"unknown sync_method {sync_method!r}")
        self.spool = spool
        self.sync_method = sync_method
        self._reactor = reactor
        self.runner = runner or self._in_thread("_commit_pool", "trackermail-spool")
        self.write_runner = write_runner or self._in_thread("_write_pool",
                                                           "trackermail-spool-write")
        self._commit_pool: Any = None
        self._write_pool: Any = None
        self._shutdown_trigger: Any = None
        self._fsync_pool: ThreadPoolExecutor | None = None
        self._pending: list[tuple[TransactionWriter, Deferred]] = []
        self._busy = False
        self._drain_waiters: dict[TransactionWriter, list[Deferred]] = {}
        self.batches = 0

    # Threads

    def _in_thread(self, attribute: str, name: str) -> Callable[..., Deferred]:
        # Threads of our own: a reactor pool busy with DNS or database work
        # must not delay a 250.
        def run(f: Callable[..., Any], *args: Any) -> Deferred:
            if self._reactor is None:
                # Looked up only now, so deliver_sync() (the MTA pipe command)
                # never installs a reactor.
                from twisted.internet import reactor

                self._reactor = reactor
            pool = getattr(self, attribute)
            if pool is None:
                from twisted.python.threadpool import ThreadPool

                pool = ThreadPool(1, 1, name)
                pool.start()
                setattr(self, attribute, pool)
                if self._shutdown_trigger is None:
                    self._shutdown_trigger = self._reactor.addSystemEventTrigger(
                        "during", "shutdown", self.close)
            return threads.deferToThreadPool(self._reactor, pool, f, *args)

        return run

    def close(self) -> None:
        for attribute in ("_commit_pool", "_write_pool"):
            pool = getattr(self, attribute)
            if pool is not None:
                pool.stop()
                setattr(self, attribute, None)
        if self._shutdown_trigger is not None:
            try:
                self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            except (ValueError, TypeError, KeyError, AttributeError):
                pass
            self._shutdown_trigger = None
        if self._fsync_pool is not None:
            self._fsync_pool.shutdown(wait=True)
            self._fsync_pool = None

    # Writers

    def open(self, envelope: Any) -> TransactionWriter:
        return TransactionWriter(self, envelope)

    def tmp_path(self, writer: TransactionWriter) -> str:
        return os.path.join(self.spool.dir("tmp"), writer.name)

    def append(self, writer: TransactionWriter, chunks: list[bytes]) -> None:
        """Write C{chunks} to the writer's file, creating it (runs in a thread)."""
        if writer.fd is None:
            writer.fd = os.open(self.tmp_path(writer),
                                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        _write_all(writer.fd, *chunks)

    def when_drained(self, writer: TransactionWriter) -> Deferred:
        """Fires the next time a write of C{writer} ends."""
        d: Deferred = Deferred()
        self._drain_waiters.setdefault(writer, []).append(d)
        return d

    def drained(self, writer: TransactionWriter) -> None:
        for d in self._drain_waiters.pop(writer, []):
            d.callback(None)

    def discard(self, writer: TransactionWriter) -> None:
        if writer.fd is not None:
            _close_and_unlink(writer.fd, self.tmp_path(writer))
            writer.fd = None

    # Group commit

    def commit(self, writer: TransactionWriter) -> Deferred:
        d: Deferred = Deferred()
        if writer.error is not None:
            self.discard(writer)
            return defer.fail(writer.error)
        self._pending.append((writer, d))
        if not self._busy:
            self._start_batch()
        return d

    def _start_batch(self) -> None:
        batch, self._pending = self._pending, []
        self._busy = True
        self.batches += 1
        writers = [w for w, _ in batch]
        d = self.runner(self.commit_batch, writers)
        d.addBoth(self._batch_done, batch)

    def _batch_done(self, result: Any, batch: list[tuple[TransactionWriter, Deferred]]) -> None:
        outcomes: Iterable[Any]
        if isinstance(result, Failure):
            outcomes = [result] * len(batch)
        else:
            outcomes = result
        for (writer, d), outcome in zip(batch, outcomes):
            if isinstance(outcome, (BaseException, Failure)):
                d.errback(outcome)
            else:
                d.callback(outcome)
        # Commits that queued up while this batch was on disk share the next
        # batch, and so its syncs.
        if self._pending:
            self._start_batch()
        else:
            self._busy = False

    def commit_batch(self, writers: list[TransactionWriter]) -> list[Any]:
        """
        Write what is left, sync, rename and sync the directory for a whole
        batch (runs in a thread). Returns one path or exception per writer.
        """
        results: list[Any] = [None] * len(writers)
        written: list[tuple[int, TransactionWriter]] = []
        for i, writer in enumerate(writers):
            try:
                self.append(writer, writer.take_buffer())
            except OSError as e:
                results[i] = e
                self.discard(writer)
                continue
            written.append((i, writer))
        if self.spool.fsync and written:
            for j, e in self._sync_files([w.fd for _, w in written]):
                results[written[j][0]] = e
        renamed = []
        new_dir = self.spool.dir("new")
        for i, writer in written:
            if results[i] is not None:
                self.discard(writer)
                continue
            final = os.path.join(new_dir, writer.name)
            try:
                os.close(writer.fd)
                writer.fd = None
                os.rename(self.tmp_path(writer), final)
            except OSError as e:
                results[i] = e
                writer.fd = None
                _unlink_quietly(self.tmp_path(writer))
                continue
            renamed.append((i, final))
        if self.spool.fsync and renamed:
            try:
                fsync_dir(new_dir)
            except OSError as e:
                # The names may or may not survive a crash; nobody gets a 250
                # for them, so take them back rather than process them.
                for i, final in renamed:
                    results[i] = e
                    _unlink_quietly(final)
                return results
        for i, final in renamed:
            results[i] = final
        return results

    def write_now(self, envelope: Any, data: bytes) -> str:
        """Write, sync and rename one message in this thread (no reactor)."""
        writer = self.open(envelope)
        writer._buffer.append(bytes(data))
        (result,) = self.commit_batch([writer])
        if isinstance(result, BaseException):
            raise result
        return result

    def _sync_files(self, fds: list[int]) -> list[tuple[int, OSError]]:
        method = self.sync_method
        if method == "auto":
            # One file: its own fsync waits for nobody else's dirty data.
            method = "syncfs" if (_SYNCFS_OK and len(fds) > 1) else "fsync"
        if method == "syncfs" and _syncfs is not None:
            if _syncfs(fds[0]) == 0:
                return []
            err = ctypes.get_errno()
            e = OSError(err, os.strerror(err))
            return [(i, e) for i in range(len(fds))]
        if len(fds) == 1:
            try:
                os.fsync(fds[0])
                return []
            except OSError as e:
                return [(0, e)]
        # Concurrent fsyncs are merged into one journal commit by the file
        # system; sequential ones each wait for their own.
        if self._fsync_pool is None:
            self._fsync_pool = ThreadPoolExecutor(8, thread_name_prefix="spool-fsync")
        futures = [self._fsync_pool.submit(os.fsync, fd) for fd in fds]
        errors = []
        for i, fut in enumerate(futures):
            e = fut.exception()
            if e is not None:
                errors.append((i, e))
        return errors


def _write_all(fd: int, *chunks: bytes) -> None:
    view = [memoryview(c) for c in chunks if c]
    while view:
        n = os.writev(fd, view[:512])
        if n == 0:
            raise OSError(errno.EIO, "short write")
        while view and n >= len(view[0]):
            n -= len(view[0])
            view.pop(0)
        if n:
            view[0] = view[0][n:]


def _close_and_unlink(fd: int, path: str) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
    _unlink_quietly(path)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
