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

import re
from collections import defaultdict
from itertools import groupby
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from trackermail.store.sql import Exec, Many, Notify, Row, Rows, Value

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


@dataclass(frozen=True)
class OutboxSummary:
    """
    Deliveries by state, and the oldest due time; C{sent}: the copies sent
    of the messages not purged yet (see L{purge_finished}).
    """

    queued: int
    sending: int
    sent: int
    failed: int
    oldest_due: float | None


@dataclass(frozen=True)
class MessageCounts:
    """One outbox message: copies sent, when the last one went, deliveries left by state."""

    id: int
    origin: str
    sent: int
    last_sent: float | None
    left: dict[str, int]


@dataclass(frozen=True)
class Claims:
    """Deliveries one node is sending, and when its leases on them end."""

    node: str
    count: int
    first_expiry: float
    last_expiry: float


@dataclass(frozen=True)
class InFlight:
    id: int
    recipient: str
    node: str
    claimed_until: float
    attempts: int


@dataclass(frozen=True)
class ErrorGroup:
    """Deferred (or failed) deliveries sharing one last error."""

    code: int | None
    error: str
    count: int
    next_attempt: float | None


@dataclass(frozen=True)
class OutboxReport:
    """What C{trackermail outbox} and C{trackermail status} show."""

    summary: OutboxSummary
    due: int
    claims: list[Claims]
    in_flight: list[InFlight]
    deferred: list[ErrorGroup]
    failed: list[ErrorGroup]


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


def enqueue(body, deliveries: Sequence[tuple], now: float, origin: str = ""):
    """
    Store C{body} (C{bytes}, or a L{BodySource}) once and one queued
    delivery per C{(recipient, sender)} or C{(recipient, sender, prefix)},
    where C{prefix} are header lines sent before the body for that
    recipient only. C{origin} is the queue id of the received message it
    was made for (for the logs). Fires with the message id (None when there
    is nobody to send to).
    """
    if not deliveries:
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
        yield Exec("UPDATE outbox_messages SET size = ? WHERE id = ?", (size, mid))
    yield Many(
        "INSERT INTO outbox_deliveries "
        "(message_id, recipient, sender, next_attempt, created, prefix) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(mid, d[0], d[1], now, now, bytes(d[2]) if len(d) > 2 and d[2] else None)
         for d in deliveries],
    )
    yield Notify("outbox")
    return mid


def read_body(message_id: int):
    """
    The chunks of a stored body, in order (a tuple of C{bytes}, each
    starting at a line boundary), or None when the body is gone or
    incomplete.
    """
    row = yield Row("SELECT body, size FROM outbox_messages WHERE id = ?", (message_id,))
    if row is None:
        return None
    first, size = bytes(row[0]), row[1]
    parts = [first]
    if size > len(first):
        rows = yield Rows(
            "SELECT data FROM outbox_chunks WHERE message_id = ? ORDER BY seq", (message_id,))
        parts.extend(bytes(r[0]) for r in rows)
    if sum(map(len, parts)) != size:
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
RETURNING id, message_id, recipient, sender, attempts, created, prefix
"""
_DUE = "state = 'queued' AND next_attempt <= ?"
_ABANDONED = "state = 'sending' AND claimed_until <= ? AND claimed_by <> ?"

# PostgreSQL: "id = ANY(ARRAY(...))" makes the outer update look its rows up
# by primary key; with "id IN (...)" it chose a hash join over the whole
# table. SQLite looks them up by key either way.
_CLAIM_FORMS = {
    "postgresql": {"lock": " FOR UPDATE SKIP LOCKED", "ids": "id = ANY(ARRAY", "close": ")"},
    "sqlite": {"lock": "", "ids": "id IN ", "close": ""},
}


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _groups(items: Sequence, size: int = 500):
    for start in range(0, len(items), size):
        yield items[start: start + size]


def claim_due(dialect: str, node: str, now: float, limit: int, lease: float):
    """
    Claim up to C{limit} due deliveries for C{node} until C{now + lease}:
    queued ones that are due, and those whose other node's lease ran out (a
    node never takes back its own: it still knows them, or it released
    them when it started). Sorted by message, so a fan-out's copies are
    together.
    """
    form = _CLAIM_FORMS[dialect]
    rows = yield Rows(_CLAIM.format(which=_ABANDONED, **form),
                      (node, now + lease, now, node, limit))
    if len(rows) < limit:
        rows += yield Rows(_CLAIM.format(which=_DUE, **form),
                           (node, now + lease, now, limit - len(rows)))
    if not rows:
        return []
    sizes = {}
    mids = sorted({row[1] for row in rows})
    for group in _groups(mids):
        for mid, size, origin in (yield Rows(
                f"SELECT id, size, origin FROM outbox_messages WHERE id IN "
                f"({_marks(len(group))})", group)):
            sizes[mid] = (size, origin or "")
    deliveries = [Delivery(*row[:6], prefix=bytes(row[6]) if row[6] else b"",
                           size=sizes.get(row[1], (0, ""))[0],
                           origin=sizes.get(row[1], (0, ""))[1]) for row in rows]
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
                f"DELETE FROM outbox_deliveries WHERE {_MINE} AND id IN ({_marks(len(group))}) "
                "RETURNING message_id", (node, *group))):
            per_message[message_id] += 1
    # Messages are updated in order of id (nodes sharing a fan-out lock its
    # rows in the same order: no deadlock), one statement for each run of
    # messages with the same count: a commit of copies of many small
    # messages (a copy each) is one statement, like a fan-out's.
    for n, run in groupby(sorted(per_message.items()), key=lambda item: item[1]):
        for group in _groups([message_id for message_id, _ in run]):
            done.sent += n * len(group)
            yield Exec("UPDATE outbox_messages SET sent = sent + ?, last_sent = ? "
                       f"WHERE id IN ({_marks(len(group))})", (n, now, *group))
    for (when, code, text), ids in deferred.items():
        for group in _groups(sorted(ids)):
            done.retried += yield Exec(
                "UPDATE outbox_deliveries SET state = 'queued', next_attempt = ?, "
                "last_code = ?, last_error = ?, claimed_by = NULL, claimed_until = NULL "
                f"WHERE {_MINE} AND id IN ({_marks(len(group))})",
                (when, code, text, node, *group))
    for group in _groups(sorted(released)):
        done.released += yield Exec(
            "UPDATE outbox_deliveries SET state = 'queued', attempts = attempts - 1, "
            "claimed_by = NULL, claimed_until = NULL "
            f"WHERE {_MINE} AND id IN ({_marks(len(group))})", (node, *group))
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
    yield Exec(
        "DELETE FROM outbox_messages WHERE COALESCE(last_sent, created) < ? AND NOT EXISTS "
        "(SELECT 1 FROM outbox_deliveries d WHERE d.message_id = outbox_messages.id)",
        (before,),
    )


# -- what operators see and do ---------------------------------------------------


def outbox_summary(now: float):
    """Counts by state and the oldest due time (cheap: for metrics)."""
    rows = yield Rows("SELECT state, COUNT(*) FROM outbox_deliveries GROUP BY state")
    counts = dict(rows)
    # Sent copies are gone from the deliveries: their messages count them.
    counts["sent"] = (yield Value("SELECT COALESCE(SUM(sent), 0) FROM outbox_messages")) or 0
    oldest = yield Value(
        "SELECT MIN(next_attempt) FROM outbox_deliveries WHERE state = 'queued'"
        " AND next_attempt <= ?",
        (now,),
    )
    return OutboxSummary(
        queued=counts.get("queued", 0),
        sending=counts.get("sending", 0),
        sent=counts.get("sent", 0),
        failed=counts.get("failed", 0),
        oldest_due=oldest,
    )


_ADDRESS = re.compile(r"<[^<>\s]*@[^<>\s]*>")


def error_kind(text: str) -> str:
    """An error text without the addresses in it, to group errors that differ only by them."""
    return _ADDRESS.sub("<...>", text or "")


def _error_groups(rows, limit: int) -> list[ErrorGroup]:
    merged: dict[tuple, list] = {}
    for code, error, count, next_attempt in rows:
        key = (code, error_kind(error))
        entry = merged.setdefault(key, [0, None])
        entry[0] += count
        if next_attempt is not None and (entry[1] is None or next_attempt < entry[1]):
            entry[1] = next_attempt
    groups = [ErrorGroup(code, error, count, when)
              for (code, error), (count, when) in merged.items()]
    groups.sort(key=lambda g: (-g.count, g.error))
    return groups[:limit]


def outbox_report(now: float, limit: int = 20):
    """
    The outbox for an operator (an L{OutboxReport}): counts, how many are
    due now, claims by node with their lease expiry, the first C{limit}
    deliveries in flight, and deferred and failed deliveries grouped by
    their last error (addresses left out), largest groups first.
    """
    summary = yield from outbox_summary(now)
    due = yield Value(
        "SELECT COUNT(*) FROM outbox_deliveries WHERE state = 'queued' AND next_attempt <= ?",
        (now,))
    claims = yield Rows(
        "SELECT claimed_by, COUNT(*), MIN(claimed_until), MAX(claimed_until) "
        "FROM outbox_deliveries WHERE state = 'sending' GROUP BY claimed_by ORDER BY claimed_by")
    in_flight = yield Rows(
        "SELECT id, recipient, claimed_by, claimed_until, attempts FROM outbox_deliveries "
        "WHERE state = 'sending' ORDER BY claimed_until, id LIMIT ?", (limit,))
    deferred = yield Rows(
        "SELECT last_code, last_error, COUNT(*), MIN(next_attempt) FROM outbox_deliveries "
        "WHERE state = 'queued' AND last_code IS NOT NULL GROUP BY last_code, last_error")
    failed = yield Rows(
        "SELECT last_code, last_error, COUNT(*), NULL FROM outbox_deliveries "
        "WHERE state = 'failed' GROUP BY last_code, last_error")
    return OutboxReport(
        summary=summary,
        due=due or 0,
        claims=[Claims(node or "", n, first, last) for node, n, first, last in claims],
        in_flight=[InFlight(*row) for row in in_flight],
        deferred=_error_groups(deferred, limit),
        failed=_error_groups(failed, limit),
    )


def requeue_deliveries(now: float, ids: Sequence[int] | None = None, failed: bool = False):
    """
    Make deferred deliveries (all, or those of C{ids}) due at C{now}; with
    C{failed}, also put failed ones back in the queue, as new (attempts and
    the give-up clock start again). Fires with the ids requeued, sorted.
    """
    where = ""
    params: list = []
    if ids is not None:
        if not ids:
            return []
        where = f" AND id IN ({_marks(len(ids))})"
        params = list(ids)
    rows = list((yield Rows(
        "UPDATE outbox_deliveries SET next_attempt = ? "
        f"WHERE state = 'queued' AND next_attempt > ?{where} RETURNING id",
        (now, now, *params))))
    if failed:
        rows += yield Rows(
            "UPDATE outbox_deliveries SET state = 'queued', next_attempt = ?, created = ?, "
            f"attempts = 0, finished = NULL WHERE state = 'failed'{where} RETURNING id",
            (now, now, *params))
    if rows:
        yield Notify("outbox")
    return sorted(r[0] for r in rows)


def delivery_rows(message_id: int | None = None):
    """(recipient, sender, state, attempts, last_code, last_error) rows, for tests and tools."""
    where, params = ("", ()) if message_id is None else (" WHERE message_id = ?", (message_id,))
    rows = yield Rows("SELECT recipient, sender, state, attempts, last_code, last_error "
                      f"FROM outbox_deliveries{where} ORDER BY id", params)
    return [tuple(r) for r in rows]


def message_counts(message_id: int | None = None):
    """
    A L{MessageCounts} per outbox message (all, or C{message_id}'s) in order
    of id: copies sent, deliveries left by state. For tests and tools.
    """
    where, params = ("", ()) if message_id is None else (" WHERE id = ?", (message_id,))
    messages = yield Rows(
        f"SELECT id, origin, sent, last_sent FROM outbox_messages{where} ORDER BY id", params)
    where = "" if message_id is None else " WHERE message_id = ?"
    left: dict[int, dict[str, int]] = defaultdict(dict)
    for mid, state, n in (yield Rows(
            f"SELECT message_id, state, COUNT(*) FROM outbox_deliveries{where} "
            "GROUP BY message_id, state", params)):
        left[mid][state] = n
    return [MessageCounts(mid, origin or "", sent, last_sent, left.get(mid, {}))
            for mid, origin, sent, last_sent in messages]
