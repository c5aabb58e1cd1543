# -*- test-case-name: tests.outbound.test_bodies -*-
"""
Message bodies in the sender's memory: read from the store when a delivery
is about to be sent, shared by every copy of a fan-out while they are in
flight, and kept a little longer while there is room.

Two rules hold it together:

  - a body in use is never forgotten, and a body not in memory is read
    from the store: the cache only saves reads, it never decides that a
    body is gone (only the store can say that);
  - the bodies in memory stay within a byte budget, whatever the message
    and batch sizes: a delivery whose body would not fit waits until
    copies in flight finish, except that a body larger than the whole
    budget still goes, alone.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred

# acquire_now(): the body is not in memory (call acquire()).
NOT_READY = object()
# acquire(): the cache was closed while waiting.
CLOSED = object()


class _Entry:
    __slots__ = ("size", "parts", "users", "waiting")

    def __init__(self, size: int):
        self.size = size
        self.parts: Optional[tuple] = None
        self.users = 0
        # Deferreds of acquirers waiting for this body's read.
        self.waiting: Optional[list[Deferred]] = []


class BodyCache:
    """
    Bodies by message id, within C{budget} bytes.

    @param load: C{load(message_id)} returns a Deferred firing with the
        body's chunks (a tuple of C{bytes}) or None when the store has no
        (complete) body.
    """

    def __init__(self, load: Callable[[int], Any], budget: int,
                 load_many: Callable[[list[int]], Any] | None = None):
        self._load = load
        self._load_many = load_many
        self.budget = budget
        self.used = 0
        self.reads = 0
        self._entries: "OrderedDict[int, _Entry]" = OrderedDict()
        self._room: deque[Deferred] = deque()
        self._closed = False

    def acquire_now(self, message_id: int):
        """
        The body's chunks if it is in memory (it is then in use until
        L{release}), else L{NOT_READY}.
        """
        entry = self._entries.get(message_id)
        if entry is None or entry.waiting is not None:
            return NOT_READY
        entry.users += 1
        self._entries.move_to_end(message_id)
        return entry.parts

    async def acquire(self, message_id: int, size: int):
        """
        The body's chunks (None when the store has none), read from the
        store unless in memory, once there is room for C{size} bytes; it is
        in use until L{release}. L{CLOSED} when the cache was closed
        meanwhile (nothing to release then). A failed read raises, and the
        body is not in use.
        """
        entry = self._entries.get(message_id)
        if entry is not None:
            entry.users += 1
            self._entries.move_to_end(message_id)
            if entry.waiting is not None:
                d: Deferred = Deferred()
                entry.waiting.append(d)
                try:
                    await d
                except Exception:
                    entry.users -= 1
                    raise
            return entry.parts
        # First come, first served: a large body waiting for room is not
        # overtaken by small ones.
        waited = False
        if self._room or not self._make_room(size):
            waited = True
            d = Deferred()
            self._room.append(d)
            while True:
                await d
                if self._closed:
                    return CLOSED
                if message_id in self._entries:
                    # Read by someone else while we waited.
                    self._wake()
                    return await self.acquire(message_id, size)
                if self._make_room(size):
                    break
                d = Deferred()
                self._room.appendleft(d)
        entry = self._add(message_id, size)
        entry.users = 1
        if waited:
            # There may be room for the next in line too.
            self._wake()
        try:
            parts = await self._load(message_id)
        except Exception as e:
            waiting, entry.waiting = entry.waiting, None
            self._forget(message_id)
            for d in waiting:
                d.errback(e)
            raise
        entry.parts = parts
        waiting, entry.waiting = entry.waiting, None
        if parts is None:
            # Not cached: the next copy asks the store again.
            self._forget(message_id)
        for d in waiting:
            d.callback(None)
        return parts

    async def prefetch(self, wanted: list[tuple[int, int]]) -> None:
        """
        Read at once the bodies of C{wanted} (C{(message id, size)}) that
        are not in memory, as far as there is room for them: one read for a
        batch of small messages (control replies, confirmations) instead of
        one each. Only an optimisation: a body it leaves out, or cannot
        read, is read by L{acquire} as before; it never evicts a body for
        another it is only guessing will be needed.
        """
        if self._load_many is None or self._closed:
            return
        ids, sizes, room = [], {}, self.budget - self.used
        for message_id, size in wanted:
            if message_id in self._entries or message_id in sizes:
                continue
            if size > room:
                break
            ids.append(message_id)
            sizes[message_id] = size
            room -= size
        if len(ids) < 2:
            return
        try:
            found = await self._load_many(ids)
        except Exception:
            return
        for message_id in ids:
            parts = found.get(message_id)
            size = sizes[message_id]
            if (parts is None or message_id in self._entries
                    or self.used + size > self.budget):
                continue
            entry = self._add(message_id, size)
            entry.parts, entry.waiting = parts, None

    def release(self, message_id: int) -> None:
        """A copy using this body is done with it."""
        entry = self._entries.get(message_id)
        if entry is not None:
            entry.users -= 1
        self._wake()

    def open(self) -> None:
        """Take requests again after L{close}."""
        self._closed = False

    def close(self) -> None:
        """Wake everything waiting for room: it gets L{CLOSED}."""
        self._closed = True
        self._wake(everyone=True)

    def _add(self, message_id: int, size: int) -> _Entry:
        """A new entry for a body being read (or just read) from the store."""
        entry = self._entries[message_id] = _Entry(size)
        self.used += size
        self.reads += 1
        return entry

    def _forget(self, message_id: int) -> None:
        entry = self._entries.pop(message_id, None)
        if entry is not None:
            self.used -= entry.size
            self._wake()

    def _make_room(self, size: int) -> bool:
        if self.used + size <= self.budget:
            return True
        for mid in list(self._entries):
            entry = self._entries[mid]
            if entry.users <= 0 and entry.waiting is None:
                del self._entries[mid]
                self.used -= entry.size
                if self.used + size <= self.budget:
                    return True
        # A body larger than the budget goes when nothing else is in memory.
        return self.used == 0

    def _wake(self, everyone: bool = False) -> None:
        if self._room:
            if everyone:
                waiting, self._room = list(self._room), deque()
                for d in waiting:
                    d.callback(None)
            else:
                self._room.popleft().callback(None)
