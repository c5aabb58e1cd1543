# -*- test-case-name: tests.ingress.test_spool -*-
"""
The durable Maildir queue between the servers and the processor.

Layout under the spool path::

    tmp/      files being written (never read by anyone else)
    new/      durable messages waiting to be processed
    failed/   messages that can never be processed, each with NAME.reason
    broken/   messages that kept failing temporarily, each with NAME.reason
    retry/    NAME -> JSON retry state (attempts, next try, last reason)

L{Spool.deliver} answers only once the message's bytes and its name in
C{new/} are on disk; L{SpoolWatcher} feeds C{new/} to the processor.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import json
import os
import secrets
import socket
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from trackermail.errors import PermanentFailure, TemporaryFailure

log = Logger()

SUBDIRS = ("tmp", "new", "failed", "broken", "retry")
DEFAULT_RETRY_DELAYS = (150, 300, 600, 1800, 3600, 7200)

_counter = itertools.count()
_process_token: tuple[int, str] = (0, "")


def process_token() -> str:
    """
    A random token drawn once per process (again after a fork), so names
    stay unique when a pid is reused after a crash, without a urandom call
    per message.
    """
    global _process_token
    pid = os.getpid()
    if _process_token[0] != pid:
        _process_token = (pid, secrets.token_hex(4))
    return _process_token[1]


def _hostname() -> str:
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


_HOST = _hostname()


def unique_name(now: float | None = None) -> str:
    """
    A Maildir file name unique across processes and restarts.

    The pid is read at every call: twistd may fork after this module is
    imported, and a random part covers a pid reused after a crash.
    """
    if now is None:
        now = time.time()
    secs = int(now)
    usec = int((now - secs) * 1_000_000)
    return (
        f"{secs}.M{usec:06d}P{os.getpid()}Q{next(_counter)}"
        f"R{process_token()}.{_HOST}"
    )


def _check_header_value(value: str, what: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"{what} must not contain line breaks: {value!r}")
    return value


def envelope_prefix(recipient: str, mail_from: str | None) -> bytes:
    """
    The header lines the spool prepends to each stored copy.
    """
    lines = []
    if mail_from is not None:
        lines.append(f"Return-Path: <{_check_header_value(mail_from, 'sender')}>\n")
    lines.append(f"Delivered-To: {_check_header_value(recipient, 'recipient')}\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


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


class _Item:
    __slots__ = ("prefix", "data", "name", "deferred")

    def __init__(self, prefix: bytes, data: bytes, name: str, deferred: Deferred):
        self.prefix = prefix
        self.data = data
        self.name = name
        self.deferred = deferred


class Spool:
    """
    A Maildir queue with durable, group-committed delivery.

    @param fsync: when false, skip every fsync (benchmarks, tests on tmpfs):
        a 250 then survives a crash of the process, not of the machine.
    @param sync_method: how the data of a batch is made durable:
        C{"fsync"} (one fsync per file, run in parallel), C{"syncfs"} (one
        syncfs for the whole batch; flushes the whole file system, so keep
        the spool on a file system of its own if others write a lot), or
        C{"auto"}: syncfs for batches of two or more on Linux >= 5.8 (where
        it reports write-back errors), fsync otherwise.
    @param runner: C{runner(f, *args) -> Deferred} runs the blocking batch
        writer off the reactor thread; tests inject a manual one.
    """

    def __init__(
        self,
        path: str,
        fsync: bool = True,
        reactor: Any = None,
        sync_method: str = "auto",
        runner: Callable[..., Deferred] | None = None,
    ):
        if sync_method not in ("auto", "fsync", "syncfs"):
            raise ValueError(f"unknown sync_method {sync_method!r}")
        self.path = os.path.abspath(path)
        self.fsync = fsync
        self.sync_method = sync_method
        self._reactor = reactor
        self._runner = runner or self._run_in_spool_thread
        self._threadpool: Any = None
        self._shutdown_trigger: Any = None
        self._pending: list[_Item] = []
        self._busy = False
        self._fsync_pool: ThreadPoolExecutor | None = None
        self.batches = 0
        self.ensure_layout()

    def _run_in_spool_thread(self, f: Callable[..., Any], *args: Any) -> Deferred:
        # A thread of our own: a reactor pool busy with DNS or database
        # work must not delay a 250.
        if self._reactor is None:
            # Looked up only now, so deliver_sync() (the MTA pipe command)
            # never installs a reactor.
            from twisted.internet import reactor

            self._reactor = reactor
        if self._threadpool is None:
            from twisted.python.threadpool import ThreadPool

            self._threadpool = ThreadPool(1, 1, "trackermail-spool")
            self._threadpool.start()
            self._shutdown_trigger = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self.close
            )
        return threads.deferToThreadPool(self._reactor, self._threadpool, f, *args)

    # Layout and names

    def ensure_layout(self) -> None:
        """
        Create the spool directories that are missing.
        """
        for sub in SUBDIRS:
            os.makedirs(os.path.join(self.path, sub), mode=0o750, exist_ok=True)

    def dir(self, sub: str) -> str:
        return os.path.join(self.path, sub)

    def new_path(self, name: str) -> str:
        return os.path.join(self.path, "new", name)

    def list_new(self) -> list[str]:
        """
        Names of the messages in C{new/}, oldest first (names start with the
        time of delivery); dot files are ignored as Maildir readers do.
        """
        return sorted(n for n in os.listdir(self.dir("new")) if not n.startswith("."))

    # Delivery

    def deliver(self, data: bytes, recipient: str, mail_from: str | None) -> Deferred:
        """
        Store one copy of C{data} for C{recipient}.

        @return: a Deferred firing with the path in C{new/} once the file and
            its directory entry are durable, or failing with the C{OSError}
            that prevented it.
        """
        try:
            prefix = envelope_prefix(recipient, mail_from)
        except ValueError:
            return defer.fail()
        d: Deferred = Deferred()
        self._pending.append(_Item(prefix, bytes(data), unique_name(), d))
        if not self._busy:
            self._start_batch()
        return d

    def _start_batch(self) -> None:
        batch, self._pending = self._pending, []
        self._busy = True
        self.batches += 1
        d = self._runner(self._write_batch, batch)
        d.addBoth(self._batch_done, batch)

    def _batch_done(self, result: Any, batch: list[_Item]) -> None:
        if isinstance(result, Failure):
            outcomes: Iterable[Any] = [result] * len(batch)
        else:
            outcomes = result
        for item, outcome in zip(batch, outcomes):
            if isinstance(outcome, (BaseException, Failure)):
                item.deferred.errback(outcome)
            else:
                item.deferred.callback(outcome)
        # Deliveries that queued up while this batch was on disk share the
        # next batch, and so its syncs.
        if self._pending:
            self._start_batch()
        else:
            self._busy = False

    def _write_batch(self, batch: list[_Item]) -> list[Any]:
        """
        Write, sync, rename and sync the directory for a whole batch (runs in
        a thread). Returns one path or exception per item.
        """
        results: list[Any] = [None] * len(batch)
        written: list[tuple[int, int, str, str]] = []
        tmp_dir, new_dir = self.dir("tmp"), self.dir("new")
        for i, item in enumerate(batch):
            tmp = os.path.join(tmp_dir, item.name)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            except OSError as e:
                results[i] = e
                continue
            try:
                _write_all(fd, item.prefix, item.data)
            except OSError as e:
                results[i] = e
                _close_and_unlink(fd, tmp)
                continue
            written.append((i, fd, tmp, os.path.join(new_dir, item.name)))
        if self.fsync and written:
            for i, e in self._sync_files([fd for _, fd, _, _ in written]):
                results[written[i][0]] = e
        renamed = []
        for i, fd, tmp, final in written:
            if results[i] is not None:
                _close_and_unlink(fd, tmp)
                continue
            try:
                os.close(fd)
                os.rename(tmp, final)
            except OSError as e:
                results[i] = e
                _unlink_quietly(tmp)
                continue
            renamed.append((i, final))
        if self.fsync and renamed:
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

    def deliver_sync(self, data: bytes, recipient: str, mail_from: str | None) -> str:
        """
        Blocking L{deliver} for one message (the MTA pipe command).

        @raise OSError: the message could not be stored durably.
        """
        item = _Item(envelope_prefix(recipient, mail_from), bytes(data), unique_name(), Deferred())
        (result,) = self._write_batch([item])
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        """
        Stop the spool's threads (also done at reactor shutdown).
        """
        if self._threadpool is not None:
            self._threadpool.stop()
            self._threadpool = None
            try:
                self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            except (ValueError, TypeError, KeyError, AttributeError):
                pass
            self._shutdown_trigger = None
        if self._fsync_pool is not None:
            self._fsync_pool.shutdown(wait=True)
            self._fsync_pool = None

    # Retry state and parking

    def _state_path(self, name: str) -> str:
        return os.path.join(self.path, "retry", name)

    def read_retry_state(self, name: str) -> dict[str, Any] | None:
        """
        The retry state of message C{name}, or None when it never failed.
        """
        try:
            with open(self._state_path(name), "rb") as f:
                state = json.loads(f.read())
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict):
            return None
        return state

    def write_retry_state(self, name: str, state: dict[str, Any]) -> None:
        """
        Replace the retry state of C{name} atomically.

        It is not fsynced: losing it only makes a retry come sooner.
        """
        path = self._state_path(name)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f)
        os.replace(tmp, path)

    def clear_retry_state(self, name: str) -> None:
        _unlink_quietly(self._state_path(name))

    def remove(self, name: str) -> None:
        """
        Forget message C{name}: it was processed.
        """
        _unlink_quietly(self.new_path(name))
        self.clear_retry_state(name)

    def park(self, name: str, where: str, reason: str) -> str | None:
        """
        Move message C{name} from C{new/} to C{failed/} or C{broken/} and
        write the reason next to it as C{NAME.reason}.

        @return: the new path, or None when the file had already gone.
        """
        if where not in ("failed", "broken"):
            raise ValueError(where)
        target = os.path.join(self.path, where, name)
        with open(target + ".reason", "w", encoding="utf-8", errors="replace") as f:
            f.write(reason.rstrip("\n") + "\n")
        try:
            os.rename(self.new_path(name), target)
        except FileNotFoundError:
            _unlink_quietly(target + ".reason")
            return None
        self.clear_retry_state(name)
        return target

    def list_parked(self, where: str) -> list[str]:
        if where not in ("failed", "broken"):
            raise ValueError(where)
        return sorted(
            n for n in os.listdir(self.dir(where))
            if not n.endswith(".reason") and not n.startswith(".")
        )

    def requeue(self, where: str, names: Iterable[str] | None = None) -> list[str]:
        """
        Move parked messages (all, or C{names}) back into C{new/} with a
        fresh retry count. Returns the names moved.
        """
        chosen = self.list_parked(where) if names is None else [os.path.basename(n) for n in names]
        moved = []
        for name in chosen:
            self.clear_retry_state(name)
            try:
                os.rename(os.path.join(self.path, where, name), self.new_path(name))
            except FileNotFoundError:
                continue
            _unlink_quietly(os.path.join(self.path, where, name + ".reason"))
            moved.append(name)
        return moved


def _write_all(fd: int, *chunks: bytes) -> None:
    view = [memoryview(c) for c in chunks if c]
    while view:
        n = os.writev(fd, view)
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


def _describe(failure: Failure) -> str:
    value = failure.value
    return f"{type(value).__name__}: {value}"


class SpoolWatcher(service.Service):
    """
    Feed every message in C{new/} to C{process}, a bounded number at a time.

    C{process(path)} returns a Deferred. Success: the file is removed.
    L{PermanentFailure}: the file goes to C{failed/}. Anything else is
    temporary: retried after C{retry_delays}, then moved to C{broken/}.

    @param notifier_factory: C{() -> INotify-like} (C{startReading},
        C{watch}, C{loseConnection}); None uses C{twisted.internet.inotify}
        when the platform has it. Tests pass a fake.
    """

    name = "spool-watcher"

    def __init__(
        self,
        spool: Spool,
        process: Callable[[str], Deferred],
        clock: Any = None,
        concurrency: int = 8,
        rescan_interval: float = 60,
        retry_delays: Iterable[float] = DEFAULT_RETRY_DELAYS,
        notifier_factory: Callable[[], Any] | None = None,
    ):
        if clock is None:
            from twisted.internet import reactor as clock
        self.spool = spool
        self.process = process
        self.clock = clock
        self.concurrency = max(1, concurrency)
        self.rescan_interval = rescan_interval
        self.retry_delays = tuple(retry_delays)
        self._notifier_factory = notifier_factory
        self._notifier = None
        self._rescan: task.LoopingCall | None = None
        self._ready: deque[str] = deque()
        self._known: set[str] = set()
        self._waiting: dict[str, Any] = {}
        self._in_flight: dict[str, Deferred] = {}
        self._idle_waiters: list[Deferred] = []
        self._stopping = False
        self._pumping = False

    # Service

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        # Watch first, then scan: a file arriving in between is seen at least
        # once, and the name set drops the duplicate.
        self._start_notifier()
        self.scan()
        if self.rescan_interval:
            self._rescan = task.LoopingCall(self.scan)
            self._rescan.clock = self.clock
            self._rescan.start(self.rescan_interval, now=False)

    def _start_notifier(self) -> None:
        factory = self._notifier_factory
        if factory is None:
            from twisted.python.runtime import platform

            if not platform.supportsINotify():
                log.warn("inotify is not available: relying on rescans every {interval}s",
                         interval=self.rescan_interval)
                return
            from twisted.internet import inotify

            factory = lambda: inotify.INotify(self.clock)  # noqa: E731
        from twisted.internet import inotify as _in

        mask = _in.IN_MOVED_TO | _in.IN_CREATE | _in.IN_CLOSE_WRITE
        try:
            notifier = factory()
            notifier.startReading()
            notifier.watch(FilePath(os.fsencode(self.spool.dir("new"))), mask=mask,
                           callbacks=[self._notified])
        except Exception:
            log.failure("cannot watch {path}: relying on rescans", path=self.spool.dir("new"))
            return
        self._notifier = notifier

    def stopService(self) -> Deferred:
        super().stopService()
        self._stopping = True
        if self._rescan is not None and self._rescan.running:
            self._rescan.stop()
        self._rescan = None
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None
        for call in self._waiting.values():
            if call.active():
                call.cancel()
        self._waiting.clear()
        self._known.difference_update(self._ready)
        self._ready.clear()
        # Let messages in flight finish; anything left is picked up again by
        # the scan at the next start.
        return defer.DeferredList(list(self._in_flight.values()), consumeErrors=True)

    # Discovery

    def _notified(self, _ignored: Any, filepath: FilePath, mask: int) -> None:
        name = os.fsdecode(filepath.basename())
        self.add(name)

    def add(self, name: str) -> None:
        """
        Queue message C{name} in C{new/} unless it is already known.
        """
        if self._stopping or name in self._known or name.startswith("."):
            return
        self._known.add(name)
        state = self.spool.read_retry_state(name)
        if state is not None:
            delay = float(state.get("next", 0)) - self.clock.seconds()
            if delay > 0:
                self._schedule(name, delay)
                return
        self._ready.append(name)
        self._pump()

    def scan(self) -> None:
        """
        Queue every message in C{new/} that is not known yet.
        """
        try:
            names = self.spool.list_new()
        except OSError:
            log.failure("cannot scan {path}", path=self.spool.dir("new"))
            return
        for name in names:
            self.add(name)
        self._drop_orphan_states(set(names))

    def _drop_orphan_states(self, present: set[str]) -> None:
        try:
            states = os.listdir(self.spool.dir("retry"))
        except OSError:
            return
        for name in states:
            if name not in present and not name.endswith(".tmp") and name not in self._known:
                self.spool.clear_retry_state(name)

    def _schedule(self, name: str, delay: float) -> None:
        self._waiting[name] = self.clock.callLater(delay, self._retry_due, name)

    def _retry_due(self, name: str) -> None:
        self._waiting.pop(name, None)
        self._ready.append(name)
        self._pump()

    # Processing

    def _pump(self) -> None:
        # A process() that answers synchronously re-enters here from
        # _finished; the outer loop carries on instead of recursing.
        if self._pumping:
            return
        self._pumping = True
        try:
            self._pump_once()
        finally:
            self._pumping = False
        self._check_idle()

    def _pump_once(self) -> None:
        while self._ready and len(self._in_flight) < self.concurrency and not self._stopping:
            name = self._ready.popleft()
            path = self.spool.new_path(name)
            if not os.path.exists(path):
                self._known.discard(name)
                continue
            d = defer.maybeDeferred(self.process, path)
            self._in_flight[name] = d
            d.addCallbacks(self._succeeded, self._failed, callbackArgs=(name,),
                           errbackArgs=(name,))
            d.addErrback(self._bookkeeping_failed, name)
            d.addCallback(self._finished, name)

    def _succeeded(self, _result: Any, name: str) -> bool:
        self.spool.remove(name)
        return False

    def _failed(self, failure: Failure, name: str) -> bool:
        """
        Park or reschedule C{name}; True when it stays known, waiting.
        """
        reason = _describe(failure)
        if failure.check(PermanentFailure):
            self.spool.park(name, "failed", reason)
            log.error("moved {name} to failed/: {reason}", name=name, reason=reason)
            return False
        if not failure.check(TemporaryFailure):
            log.failure("unexpected error processing {name}", failure, name=name)
        state = self.spool.read_retry_state(name) or {}
        try:
            attempts = int(state.get("attempts", 0)) + 1
        except (TypeError, ValueError):
            attempts = 1
        if attempts > len(self.retry_delays):
            self.spool.park(
                name, "broken", f"{reason}\n(gave up after {attempts} attempts)"
            )
            log.error("moved {name} to broken/ after {attempts} attempts: {reason}",
                      name=name, attempts=attempts, reason=reason)
            return False
        delay = self.retry_delays[attempts - 1]
        self.spool.write_retry_state(
            name, {"attempts": attempts, "next": self.clock.seconds() + delay, "reason": reason}
        )
        log.warn("temporary failure for {name} (attempt {attempts}), retry in {delay}s: {reason}",
                 name=name, attempts=attempts, delay=delay, reason=reason)
        if self._stopping:
            return False
        self._schedule(name, delay)
        return True

    def _bookkeeping_failed(self, failure: Failure, name: str) -> bool:
        # The file stays in new/ and the next scan offers it again.
        log.failure("spool bookkeeping failed for {name}", failure, name=name)
        return False

    def _finished(self, keep: bool, name: str) -> None:
        self._in_flight.pop(name, None)
        if not keep:
            self._known.discard(name)
        self._pump()

    def _check_idle(self) -> None:
        if not self._ready and not self._in_flight and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def when_idle(self) -> Deferred:
        """
        A Deferred that fires when nothing is queued or being processed
        (messages waiting for a retry do not count).
        """
        d: Deferred = Deferred()
        self._idle_waiters.append(d)
        self._check_idle()
        return d

    @property
    def waiting_for_retry(self) -> list[str]:
        return sorted(self._waiting)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)
