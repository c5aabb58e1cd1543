# -*- test-case-name: tests.outbound.test_outbox_store -*-
"""
The outbox: message bodies stored once (in chunks), one delivery row per
recipient, and the programs the sender and the admin commands use.

Bodies: C{enqueue} takes C{bytes} or a L{BodySource} and stores the body in
chunks of at most L{CHUNK_SIZE} bytes, each cut after a line end where it
can be (so each chunk can be sent as a part of its own, see
L{trackermail.outbound.wire}): the first in C{outbox_messages.body}, the
rest in C{outbox_chunks}. A body of one chunk (most mail) is one insert.

Claims: a claim is a lease. The delivery goes to C{sending} with
C{claimed_by} (the node's stable name) and C{claimed_until}; the node renews
its leases while it is alive and releases its own claims when it starts, so
a restarted node sends again at once and another node takes over a dead
node's deliveries when their lease runs out. Results are recorded only
while the claim is still the node's own. On PostgreSQL the claim uses
C{FOR UPDATE SKIP LOCKED}, so any number of nodes can share one outbox
without sending anything twice.

Results: a sent copy's delivery is deleted at once (far cheaper than an
update of an indexed row); its message counts the copies sent (C{sent},
C{last_sent}) until it is purged, a day after its last copy went.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import chain, groupby, islice
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from trackermail.store.sql import MANY_CHUNK, Exec, Later, Many, Notify, Row, Rows, Value

CHUNK_SIZE = 1024 * 1024
_ERROR_MAX = 1000


class BodySource(Protocol):
    """
    A message body that C{enqueue} reads piece by piece instead of taking
    it as one C{bytes} value (e.g. a spool file, so that a 20 MiB mail is
    never one string in memory).

    C{chunks(size)} yields C{bytes} pieces of the body in order, each at
    most about C{size} bytes (shorter pieces are fine: the outbox re-cuts
    them). It is called once per transaction attempt and must start from
    the beginning each time: a store may run a program again (PostgreSQL
    retries serialization failures). An C{OSError} it raises fails the
    transaction like any store error.
    """

    def chunks(self, size: int) -> Iterable[bytes]:
        ...


@dataclass(frozen=True)
class Delivery:
    id: int
    message_id: int
    recipient: str
    sender: str
    attempts: int
    created: float
    prefix: bytes = b""
    # The whole body's length (without the prefix).
    size: int = 0
    # The queue id of the received message this copy was made for.
    origin: str = ""
    # When it was due (the claim order is (due, id)).
    due: float = 0.0














@dataclass(slots=True)
class Result:
    """
    What became of one claimed delivery, as the sender records it.

    C{state}: C{sent}; C{queued} (retry at C{next_attempt}); C{failed};
    C{released} (back to the queue as it was: never handed to the
    smarthost, the attempt is not counted). C{bounce}: run the bounce
    policy hook for this failure.
    """

    delivery: Delivery
    state: str
    code: int = 0
    text: str = ""
    next_attempt: float = 0.0
    bounce: bool = False


@dataclass
class Recorded:
    """What a group commit did: counts, and what the bounce hook returned."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    # Results whose claim was no longer ours (another node took it over).
    lost: int = 0
    bounced: list = field(default_factory=list)


# -- bodies -------------------------------------------------------------------


def _cut(data: bytes, start: int, size: int) -> int:
    """Where a chunk starting at C{start} ends: after the last line end in reach."""
    end = start + size
    if end >= len(data):
        return len(data)
    newline = data.rfind(b"\n", start, end)
    return newline + 1 if newline >= 0 else end


def body_chunks(body, size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """
    C{body} (C{bytes} or a L{BodySource}) as chunks of at most C{size}
    bytes, each ending after a line end unless a line is longer than a
    chunk. Holds at most about two chunks of a source in memory.
    """
    if isinstance(body, (bytes, bytearray, memoryview)):
        data = bytes(body)
        if len(data) <= size:
            yield data
            return
        start = 0
        while start < len(data):
            end = _cut(data, start, size)
            yield data[start:end]
            start = end
        return
    buffer = bytearray()
    emitted = False
    for piece in body.chunks(size):
        buffer += piece
        while len(buffer) > size:
            end = _cut(buffer, 0, size)
            yield bytes(buffer[:end])
            emitted = True
            del buffer[:end]
    if buffer or not emitted:
        yield bytes(buffer)


def enqueue(body, deliveries: Iterable[tuple], now: float, origin: str = ""):
    """
    Store C{body} (C{bytes}, or a L{BodySource}) once and one queued
    delivery per C{(recipient, sender)} or C{(recipient, sender, prefix)}
    (any iterable: taken a chunk of rows at a time),
    where C{prefix} are header lines sent before the body for that
    recipient only. C{origin} is the queue id of the received message it
    was made for (for the logs). Fires with the message id (None when there
    is nobody to send to).
    """
    deliveries = iter(deliveries)
    first_delivery = next(deliveries, None)
    if first_delivery is None:
        return None
    chunks = body_chunks(body)
    first = next(chunks)
    mid = yield Value(
        "INSERT INTO outbox_messages (body, size, created, origin) VALUES (?, ?, ?, ?) "
        "RETURNING id",
        (first, len(first), now, origin or None),
    )
    size = len(first)
    seq = 0
    for chunk in chunks:
        if not chunk:
            continue
        seq += 1
        size += len(chunk)
        yield Exec("INSERT INTO outbox_chunks (message_id, seq, data) VALUES (?, ?, ?)",
                   (mid, seq, chunk))
    if seq:
        yield Later("UPDATE outbox_messages SET size = ? WHERE id = ?", (size, mid))
    # A chunk of rows at a time: the caller may make them as they are taken.
    rows = chain([first_delivery], deliveries)
    while True:
        batch = [(mid, d[0], d[1], now, now, bytes(d[2]) if len(d) > 2 and d[2] else None)
                 for d in islice(rows, MANY_CHUNK)]
        if not batch:
            break
        yield Many(
            "INSERT INTO outbox_deliveries "
            "(message_id, recipient, sender, next_attempt, created, prefix) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            batch,
        )
    yield Notify("outbox")
    return mid


def read_small_bodies(message_ids: Sequence[int]):
    """
    The bodies stored in one chunk among C{message_ids}, read together:
    C{{message id: (chunk,)}}. Bodies in several chunks, and bodies that
    are gone, are left out (L{read_body} reads those).
    """
    found = {}
    for group in _groups(list(message_ids)):
        for message_id, body, size in (yield Rows(
                f"SELECT id, body, size FROM outbox_messages WHERE id IN "
                f"({placeholders(len(group))})", group)):
            body = bytes(body)
            if len(body) == size:
                found[message_id] = (body,)
    return found


def read_body(message_id: int):
    """
    The chunks of a stored body, in order (a tuple of C{bytes}, each
    starting at a line boundary), or None when the body is gone or
    incomplete. One statement per chunk: a driver holds a whole result in
    its own memory (PostgreSQL's as text, twice the bytes) before handing
    it over, so a 20 MiB body read at once would cost three times its size.
    """
    row = yield Row("SELECT body, size FROM outbox_messages WHERE id = ?", (message_id,))
    if row is None:
        return None
    first, size = bytes(row[0]), row[1]
    parts = [first]
    read = len(first)
    seq = 1
    while read < size:
        data = yield Value("SELECT data FROM outbox_chunks WHERE message_id = ? AND seq = ?",
                           (message_id, seq))
        if data is None:
            return None
        parts.append(bytes(data))
        read += len(parts[-1])
        seq += 1
    if read != size:
        return None
    return tuple(parts)


def outbox_body(message_id: int):
    """The whole body of a message as one C{bytes} (for tests and tools), or None."""
    parts = yield from read_body(message_id)
    return None if parts is None else b"".join(parts)


# -- claims and results ---------------------------------------------------------


# Two statements, each walking the (state, next_attempt, id) index: one
# condition OR-ed with the other made PostgreSQL scan the whole table at
# every claim (78 µs a delivery at 100,000 queued).
_CLAIM = """
UPDATE outbox_deliveries
SET state = 'sending', claimed_by = ?, claimed_until = ?, attempts = attempts + 1
WHERE {ids}(
    SELECT id FROM outbox_deliveries
    WHERE {which}
    ORDER BY state, next_attempt, id
    LIMIT ?{lock}
){close}
RETURNING id, message_id, recipient, sender, attempts, created, prefix, next_attempt
"""
_DUE = "state = 'queued' AND next_attempt <= ?"
# Past a cursor: a long drain claims batch after batch, and each claimed
# row leaves a dead entry at the start of the index range until the next
# vacuum; starting every scan at the beginning walked over all of them.
_DUE_AFTER = _DUE + " AND (next_attempt, id) > (?, ?)"
_ABANDONED = "state = 'sending' AND claimed_until <= ? AND claimed_by <> ?"

# PostgreSQL: "id = ANY(ARRAY(...))" makes the outer update look its rows up
# by primary key; with "id IN (...)" it chose a hash join over the whole
# table. SQLite looks them up by key either way.
_CLAIM_FORMS = {
    "postgresql": {"lock": " FOR UPDATE SKIP LOCKED", "ids": "id = ANY(ARRAY", "close": ")"},
    "sqlite": {"lock": "", "ids": "id IN ", "close": ""},
}


def placeholders(n: int) -> str:
    """"?, ?, ?" for n values."""
    return ",".join("?" * n)


def _groups(items: Sequence, size: int = 500):
    for start in range(0, len(items), size):
        yield items[start: start + size]


def claim_due(dialect: str, node: str, now: float, limit: int, lease: float,
              after: tuple[float, int] | None = None, take_over: bool = True):
    """
    Claim up to C{limit} due deliveries for C{node} until C{now + lease}:
    queued ones that are due, and (with C{take_over}) those whose other
    node's lease ran out (a node never takes back its own: it still knows
    them, or it released them when it started). Sorted by message, so a
    fan-out's copies are together.

    @param after: claim only deliveries past this C{(due, id)}: the last
        one of the previous full batch (see L{Delivery.due}).
    """
    form = _CLAIM_FORMS[dialect]
    rows = []
    if take_over:
        rows = yield Rows(_CLAIM.format(which=_ABANDONED, **form),
                          (node, now + lease, now, node, limit))
    if len(rows) < limit:
        if after is None:
            rows += yield Rows(_CLAIM.format(which=_DUE, **form),
                               (node, now + lease, now, limit - len(rows)))
        else:
            rows += yield Rows(_CLAIM.format(which=_DUE_AFTER, **form),
                               (node, now + lease, now, after[0], after[1],
                                limit - len(rows)))
    if not rows:
        return []
    sizes = {}
    mids = sorted({row[1] for row in rows})
    for group in _groups(mids):
        for mid, size, origin in (yield Rows(
                f"SELECT id, size, origin FROM outbox_messages WHERE id IN "
                f"({placeholders(len(group))})", group)):
            sizes[mid] = (size, origin or "")
    deliveries = [Delivery(*row[:6], prefix=bytes(row[6]) if row[6] else b"",
                           size=sizes.get(row[1], (0, ""))[0],
                           origin=sizes.get(row[1], (0, ""))[1], due=row[7]) for row in rows]
    deliveries.sort(key=lambda d: (d.message_id, d.id))
    return deliveries


def release_claims(node: str):
    """
    Put every delivery C{node} is sending back in the queue (due as it
    was): what a node does when it starts, since nothing of its previous
    life is in flight any more. Fires with how many.
    """
    return (yield Exec(
        "UPDATE outbox_deliveries SET state = 'queued', claimed_by = NULL, "
        "claimed_until = NULL WHERE state = 'sending' AND claimed_by = ?", (node,)))


def renew_claims(node: str, until: float, before: float | None = None):
    """
    Extend the leases of what C{node} is sending to C{until}: all of them,
    or those ending before C{before} (a copy sent within seconds of its
    claim is never written again for its lease). Fires with how many.
    """
    if before is None:
        return (yield Exec(
            "UPDATE outbox_deliveries SET claimed_until = ? "
            "WHERE state = 'sending' AND claimed_by = ?", (until, node)))
    return (yield Exec(
        "UPDATE outbox_deliveries SET claimed_until = ? "
        "WHERE state = 'sending' AND claimed_by = ? AND claimed_until < ?",
        (until, node, before)))


def next_wakeup(node: str):
    """
    When C{node} should look again: the next queued delivery's due time, or
    the earliest lease of another node's deliveries (it may die), whichever
    comes first; None when there is neither.
    """
    due = yield Value("SELECT MIN(next_attempt) FROM outbox_deliveries WHERE state = 'queued'")
    lease = yield Value(
        "SELECT MIN(claimed_until) FROM outbox_deliveries "
        "WHERE state = 'sending' AND claimed_by <> ?", (node,))
    times = [t for t in (due, lease) if t is not None]
    return min(times) if times else None


_MINE = "state = 'sending' AND claimed_by = ?"


def record_results(node: str, now: float, results: Sequence[Result], hook: Callable | None):
    """
    Record a group of results of C{node}'s deliveries in one transaction: a
    statement per kind of result (all sent ones in one), a row at a time
    only for failures, which go through the bounce policy C{hook} (a store
    program C{hook(recipient, sender, code, text, now)}) when
    C{result.bounce}. A result whose claim is no longer C{node}'s (its
    lease ran out and another node took it) is not recorded.
    Fires with a L{Recorded}.
    """
    done = Recorded()
    sent: list[int] = []
    deferred: dict[tuple, list[int]] = defaultdict(list)
    released: list[int] = []
    failed: list[Result] = []
    for r in results:
        if r.state == "sent":
            sent.append(r.delivery.id)
        elif r.state == "queued":
            deferred[(r.next_attempt, r.code, r.text[:_ERROR_MAX])].append(r.delivery.id)
        elif r.state == "released":
            released.append(r.delivery.id)
        else:
            failed.append(r)
    # A sent copy is deleted, not updated (the update of an indexed row cost
    # eight times as much): its message counts the copies sent.
    per_message: dict[int, int] = defaultdict(int)
    for group in _groups(sorted(sent)):
        for (message_id,) in (yield Rows(
                f"DELETE FROM outbox_deliveries WHERE {_MINE} AND id IN ({placeholders(len(group))}) "
                "RETURNING message_id", (node, *group))):
            per_message[message_id] += 1
    # Messages are updated in order of id (nodes sharing a fan-out lock its
    # rows in the same order: no deadlock), one statement for each run of
    # messages with the same count: a commit of copies of many small
    # messages (a copy each) is one statement, like a fan-out's.
    for n, run in groupby(sorted(per_message.items()), key=lambda item: item[1]):
        for group in _groups([message_id for message_id, _ in run]):
            done.sent += n * len(group)
            yield Later("UPDATE outbox_messages SET sent = sent + ?, last_sent = ? "
                       f"WHERE id IN ({placeholders(len(group))})", (n, now, *group))
    for (when, code, text), ids in deferred.items():
        for group in _groups(sorted(ids)):
            done.retried += yield Exec(
                "UPDATE outbox_deliveries SET state = 'queued', next_attempt = ?, "
                "last_code = ?, last_error = ?, claimed_by = NULL, claimed_until = NULL "
                f"WHERE {_MINE} AND id IN ({placeholders(len(group))})",
                (when, code, text, node, *group))
    for group in _groups(sorted(released)):
        done.released += yield Exec(
            "UPDATE outbox_deliveries SET state = 'queued', attempts = attempts - 1, "
            "claimed_by = NULL, claimed_until = NULL "
            f"WHERE {_MINE} AND id IN ({placeholders(len(group))})", (node, *group))
    for r in failed:
        n = yield Exec(
            "UPDATE outbox_deliveries SET state = 'failed', finished = ?, last_code = ?, "
            f"last_error = ?, claimed_by = NULL, claimed_until = NULL WHERE {_MINE} AND id = ?",
            (now, r.code, r.text[:_ERROR_MAX], node, r.delivery.id))
        done.failed += n
        if n and r.bounce and hook is not None:
            d = r.delivery
            done.bounced.append((yield from hook(d.recipient, d.sender, r.code, r.text, now)))
    done.lost = len(results) - done.sent - done.retried - done.released - done.failed
    return done


def purge_finished(before: float):
    """
    Forget the messages that have no delivery left (all their copies were
    sent) and whose last copy went before C{before}: their bodies, chunks
    and counts of copies sent. Failed deliveries, and so their messages,
    are kept for the operator.
    """
    # A message with no copy sent (its deliveries deleted by hand): by its creation.
    yield Later(
        "DELETE FROM outbox_messages WHERE COALESCE(last_sent, created) < ? AND NOT EXISTS "
        "(SELECT 1 FROM outbox_deliveries d WHERE d.message_id = outbox_messages.id)",
        (before,),
    )
