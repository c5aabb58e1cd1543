# -*- test-case-name: tests.ingress.test_spool -*-
"""
The durable Maildir queue between the servers and the processor, and the
only code that knows its layout::

    tmp/      files being written (never read by anyone else)
    new/      durable messages waiting to be processed
    failed/   messages that can never be processed, each with NAME.reason
    broken/   messages that kept failing temporarily, each with NAME.reason
    retry/    NAME -> JSON retry state (attempts, next try, last reason)

One file holds one transaction: its envelope (queue id, sender, every
recipient with its route) on the first line, then the message. It becomes
visible by one rename, so a transaction is processed once for all its
recipients or not at all. Writing (streamed while DATA arrives, then group
committed) is L{trackermail.ingress.spool_writer}'s job; this module names,
reads, counts, parks and requeues.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from trackermail.routing import Route

SUBDIRS = ("tmp", "new", "failed", "broken", "retry")
PARKED = ("failed", "broken")

#: The first bytes of a spool file that carries its envelope.
MAGIC = b"TRACKERMAIL-SPOOL/1 "
#: How much of a legacy file's start is searched for its envelope lines.
_LEGACY_HEAD = 4096

_counter = itertools.count()
_process_token: tuple[int, str] = (0, "")


def process_token() -> str:
    """
    A random token drawn once per process (again after a fork), so names
    stay unique when a pid is reused after a crash, and across nodes
    sharing one database, without a urandom call per message.
    """
    global _process_token
    pid = os.getpid()
    if _process_token[0] != pid:
        _process_token = (pid, secrets.token_hex(4))
    return _process_token[1]


def new_queue_id(now: float | None = None) -> str:
    """
    The id that names one transaction from reception to its last copy: in
    replies, log lines, the Received: line, the spool's file name and the
    outbox. Ordered by time, unique across processes, restarts and nodes.
    """
    if now is None:
        now = time.time()
    secs = int(now)
    usec = int((now - secs) * 1_000_000)
    return f"{secs:08X}{usec:05X}{next(_counter):X}.{process_token()}"


@dataclass(frozen=True)
class Envelope:
    """
    What the SMTP/LMTP transaction said about a message, kept beside it.

    @ivar sender: the envelope sender; C{""} for the null sender C{<>},
        None when unknown (a file that came without an envelope).
    @ivar recipients: the accepted recipients, each once (case-insensitive).
    @ivar routes: the route computed at RCPT for each recipient, or None
        when it must be computed again (a legacy or hand-made file).
    """

    queue_id: str
    sender: str | None
    recipients: tuple[str, ...]
    routes: tuple[Route, ...] | None = None
    received: float = 0.0
    protocol: str = ""
    client: str = ""

    def encode(self) -> bytes:
        record: dict[str, Any] = {
            "id": self.queue_id, "from": self.sender, "to": list(self.recipients),
            "received": self.received, "proto": self.protocol, "client": self.client,
        }
        if self.routes is not None:
            record["routes"] = [_route_record(r) for r in self.routes]
        text = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
        return MAGIC + text.encode("ascii") + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> "Envelope":
        """
        @raise ValueError: C{line} is not an envelope line of ours.
        """
        if not line.startswith(MAGIC):
            raise ValueError("not a spool envelope")
        record = json.loads(line[len(MAGIC):])
        recipients = tuple(str(r) for r in record["to"])
        routes = record.get("routes")
        if routes is not None:
            routes = tuple(Route(**r) for r in routes)
            if len(routes) != len(recipients):
                raise ValueError("envelope routes do not match its recipients")
        sender = record.get("from")
        return cls(str(record["id"]), None if sender is None else str(sender), recipients,
                   routes, float(record.get("received") or 0), str(record.get("proto") or ""),
                   str(record.get("client") or ""))


def _route_record(route: Route) -> dict:
    return {k: v for k, v in route.__dict__.items() if v is not None}


class SpoolBody:
    """
    A byte range of a spool file: the whole message, read when needed in
    pieces, so that processing and the outbox never hold a big message
    whole in memory. C{len()} is its size; C{chunks(size)} yields it.
    """

    def __init__(self, path: str, offset: int, length: int):
        self.path = path
        self.offset = offset
        self.length = length

    def __len__(self) -> int:
        return self.length

    def chunks(self, size: int = 1024 * 1024) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            left = self.length
            while left > 0:
                data = f.read(min(size, left))
                if not data:
                    raise OSError(f"{self.path}: shorter than its recorded size")
                left -= len(data)
                yield data

    def read(self, limit: int | None = None) -> bytes:
        """The first C{limit} bytes (all of them by default)."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.length if limit is None else min(limit, self.length))

    def __bytes__(self) -> bytes:
        return self.read()


@dataclass
class SpoolMessage:
    """
    A stored message opened for processing: its envelope (None for a file
    without one) and where the message itself lies in the file.
    """

    path: str
    envelope: Envelope | None
    offset: int
    size: int
    # The Return-Path and Delivered-To lines on top of a file without an
    # envelope (a legacy spool file, a file an MTA delivered), as header
    # pairs: they describe the delivery, so they are not part of the copy
    # that is forwarded, but the router reads them.
    delivery_lines: tuple[tuple[str, str], ...] = ()
    _digest: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def queue_id(self) -> str:
        return self.envelope.queue_id if self.envelope is not None else self.name

    def body(self) -> SpoolBody:
        return SpoolBody(self.path, self.offset, self.size)

    def head(self, limit: int) -> bytes:
        return self.body().read(limit)

    def content_digest(self) -> str:
        """SHA-256 of the message (files without an envelope are known by it)."""
        if self._digest is None:
            h = hashlib.sha256()
            for chunk in self.body().chunks():
                h.update(chunk)
            self._digest = h.hexdigest()
        return self._digest


def open_message(path: str) -> SpoolMessage:
    """
    Open a spool file, or any file holding one mail message (a legacy spool
    file with C{Return-Path}/C{Delivered-To} lines on top, a file an MTA
    delivered, an mbox file with its C{From } line).

    @raise OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        first = f.readline(64 * 1024)
        if first.startswith(MAGIC):
            try:
                envelope = Envelope.decode(first)
            except (ValueError, KeyError, TypeError) as e:
                raise BadSpoolFile(f"{os.path.basename(path)}: bad envelope: {e}")
            return SpoolMessage(path, envelope, len(first), size - len(first))
        f.seek(0)
        head = f.read(_LEGACY_HEAD)
    offset, lines = delivery_start(head)
    return SpoolMessage(path, None, offset, size - offset, delivery_lines=lines)


class BadSpoolFile(ValueError):
    """A spool file whose envelope line cannot be read."""


def delivery_start(head: bytes) -> tuple[int, tuple[tuple[str, str], ...]]:
    """
    Where the message starts in a file without an envelope line, and the
    delivery lines above it: a leading mbox C{From } line is not part of
    the message, and the C{Return-Path} and C{Delivered-To} lines an older
    spool (or an MTA) put on top describe the delivery, not the mail.
    """
    start = 0
    if head.startswith(b"From "):
        end = head.find(b"\n")
        start = len(head) if end < 0 else end + 1
    lines = []
    for _ in range(2):
        end = head.find(b"\n", start)
        if end < 0:
            break
        line = head[start:end].rstrip(b"\r")
        name, colon, value = line.partition(b":")
        if not colon or name.lower() not in (b"return-path", b"delivered-to"):
            break
        lines.append((name.decode("ascii", "replace"),
                      value.strip().decode("utf-8", "surrogateescape")))
        start = end + 1
    return start, tuple(lines)


def envelope_sender_of(message: SpoolMessage) -> str | None:
    """
    The envelope sender of an opened message: from its envelope, else from
    a Return-Path line on top; C{""} is the null sender, None unknown.
    """
    if message.envelope is not None:
        return message.envelope.sender
    for name, value in message.delivery_lines:
        if name.lower() == "return-path":
            value = value.strip()
            if value.startswith("<") and value.endswith(">"):
                value = value[1:-1]
            return value.strip()
    return None


class Spool:
    """
    The spool directory. Writers come from L{open_transaction}; everything
    else (listing, counts, retry states, parking, requeueing, discarding)
    is here.

    @param fsync: when false, skip every fsync (benchmarks, tests on tmpfs):
        a 250 then survives a crash of the process, not of the machine.
    @param sync_method: C{"fsync"}, C{"syncfs"} or C{"auto"}; see
        L{trackermail.ingress.spool_writer}.
    @param runner: C{runner(f, *args) -> Deferred} runs blocking commits off
        the reactor thread; tests inject a synchronous one.
    @param write_runner: the same for the writes streamed during DATA.
    """

    def __init__(self, path: str, fsync: bool = True, reactor: Any = None,
                 sync_method: str = "auto", runner: Any = None, write_runner: Any = None):
        from trackermail.ingress.spool_writer import Committer

        self.path = os.path.abspath(path)
        self.fsync = fsync
        self.ensure_layout()
        self.committer = Committer(self, sync_method=sync_method, reactor=reactor,
                                   runner=runner, write_runner=write_runner)

    # Layout

    def ensure_layout(self) -> None:
        """Create the spool directories that are missing."""
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

    # Writing

    def open_transaction(self, envelope: Envelope):
        """A L{trackermail.ingress.spool_writer.TransactionWriter} for one message."""
        return self.committer.open(envelope)

    def deliver(self, data: bytes, recipient: str, mail_from: str | None):
        """
        Store one message for one recipient (no streaming): a Deferred
        firing with its path in C{new/} once it is durable.
        """
        writer = self.open_transaction(Envelope(new_queue_id(), mail_from, (recipient,),
                                                received=time.time(), protocol="local"))
        writer.write(data)
        return writer.commit()

    def deliver_sync(self, data: bytes, recipient: str, mail_from: str | None) -> str:
        """
        Blocking L{deliver} (the MTA pipe command): the path once durable.

        @raise OSError: the message could not be stored durably.
        """
        envelope = Envelope(new_queue_id(), mail_from, (recipient,), received=time.time(),
                            protocol="pipe")
        return self.committer.write_now(envelope, data)

    @property
    def batches(self) -> int:
        """Group commits made so far."""
        return self.committer.batches

    def free_bytes(self) -> int:
        """Bytes the spool's file system still has for us."""
        return shutil.disk_usage(self.path).free

    def close(self) -> None:
        """Stop the spool's threads (also done at reactor shutdown)."""
        self.committer.close()

    # Reading

    def open_message(self, name: str) -> SpoolMessage:
        return open_message(self.new_path(os.path.basename(name)))

    # Retry state

    def _state_path(self, name: str) -> str:
        return os.path.join(self.path, "retry", name)

    def read_retry_state(self, name: str) -> dict[str, Any] | None:
        """The retry state of message C{name}, or None when it never failed."""
        try:
            with open(self._state_path(name), "rb") as f:
                state = json.loads(f.read())
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None

    def write_retry_state(self, name: str, state: dict[str, Any]) -> None:
        """
        Replace the retry state of C{name} atomically. It is not fsynced:
        losing it only makes a retry come sooner.
        """
        path = self._state_path(name)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f)
        os.replace(tmp, path)

    def clear_retry_state(self, name: str) -> None:
        _unlink_quietly(self._state_path(name))

    def drop_orphan_states(self, keep: Iterable[str]) -> None:
        """Forget retry states of messages that are gone (and not in C{keep})."""
        keep = set(keep)
        try:
            states = os.listdir(self.dir("retry"))
            present = set(os.listdir(self.dir("new")))
        except OSError:
            return
        for name in states:
            if name.endswith(".tmp") or name in present or name in keep:
                continue
            self.clear_retry_state(name)

    # Outcomes

    def discard(self, name: str) -> None:
        """Forget message C{name}: it was processed."""
        _unlink_quietly(self.new_path(name))
        self.clear_retry_state(name)

    def park(self, name: str, where: str, reason: str) -> str | None:
        """
        Move message C{name} from C{new/} to C{failed/} or C{broken/} and
        write the reason next to it as C{NAME.reason}.

        @return: the new path, or None when the file had already gone.
        """
        if where not in PARKED:
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
        if where not in PARKED:
            raise ValueError(where)
        return sorted(n for n in os.listdir(self.dir(where))
                      if not n.endswith(".reason") and not n.startswith("."))

    def parked_reason(self, where: str, name: str) -> str:
        try:
            with open(os.path.join(self.path, where, name + ".reason"), encoding="utf-8",
                      errors="replace") as f:
                return f.read().strip()
        except OSError:
            return ""

    def requeue(self, where: str, names: Iterable[str] | None = None) -> list[str]:
        """
        Move parked messages (all, or C{names}) back into C{new/} with a
        fresh retry count. Returns the names moved.
        """
        chosen = self.list_parked(where) if names is None else [os.path.basename(n)
                                                                for n in names]
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

    # Counts



def retry_states(path: str) -> list[tuple[str, dict[str, Any]]]:
    """C{(name, state)} of the messages of the spool at C{path} waiting for a retry."""
    directory = os.path.join(path, "retry")
    try:
        names = sorted(n for n in os.listdir(directory) if not n.endswith(".tmp"))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        try:
            with open(os.path.join(directory, name), "rb") as f:
                state = json.loads(f.read())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict):
            found.append((name, state))
    return found


def writable_problem(path: str, need: int = 0) -> str | None:
    """
    Why the spool at C{path} cannot take a message of C{need} bytes right
    now (a file cannot be created in its C{tmp/}, or the space is not
    there), or None when it can.
    """
    tmp = os.path.join(path, "tmp")
    probe = os.path.join(tmp, f".healthz-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        return f"cannot create a file in {tmp}: {e.strerror or e}"
    try:
        os.write(fd, b"ok\n")
    except OSError as e:
        return f"cannot write in {tmp}: {e.strerror or e}"
    finally:
        os.close(fd)
        _unlink_quietly(probe)
    try:
        free = shutil.disk_usage(path).free
    except OSError as e:
        return f"cannot tell the free space of {path}: {e.strerror or e}"
    if free < need:
        return (f"{free // (1024 * 1024)} MiB free in {path}, less than a message of the"
                f" maximum size ({need // (1024 * 1024)} MiB)")
    return None


def spool_counts(path: str) -> dict[str, tuple[int | None, float | None]]:
    """
    C{state -> (messages, oldest modification time)} for C{new}, C{failed}
    and C{broken} of the spool at C{path}; C{(None, None)} for a directory
    that cannot be read. Creates nothing (read-only tools use it).
    """
    return {sub: _count(os.path.join(path, sub)) for sub in ("new",) + PARKED}


def _count(directory: str) -> tuple[int | None, float | None]:
    try:
        names = [n for n in os.listdir(directory)
                 if not n.endswith(".reason") and not n.startswith(".")]
    except OSError:
        return None, None
    oldest = None
    for n in names:
        try:
            m = os.stat(os.path.join(directory, n)).st_mtime
        except OSError:
            continue
        oldest = m if oldest is None else min(oldest, m)
    return len(names), oldest


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
