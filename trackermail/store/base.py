# -*- test-case-name: tests.store.test_store -*-
"""
What both store backends share: listeners of notifications, and migration
as a program run through the backend's C{run}.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from trackermail.store import schema

log = Logger()


class StoreBase:
    dialect = ""
    _listeners: dict | None = None

    def listen(self, channel: str, callback):
        """
        Call C{callback()} after any transaction (of this process, or of any
        node on PostgreSQL) that notified C{channel}. Fires once listening.
        """
        if self._listeners is None:
            self._listeners = {}
        self._listeners.setdefault(channel, []).append(callback)
        return defer.succeed(None)

    def _fire_notes(self, channels) -> None:
        for channel in sorted(channels):
            self._notify_listeners(channel)

    def _notify_listeners(self, channel: str) -> None:
        for callback in list((self._listeners or {}).get(channel, ())):
            try:
                callback()
            except Exception:
                log.failure("notification listener failed for {channel}", channel=channel)

    def run(self, program, *args, **kwargs) -> Deferred:
        raise NotImplementedError

    def migrate(self) -> Deferred:
        return self.run(schema.migrate, self.dialect)
