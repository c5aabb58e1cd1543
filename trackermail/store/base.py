# -*- test-case-name: tests.store.test_store -*-
"""
What both store backends share: every L{IStore} method is one program of
L{trackermail.store.ops} run through the backend's C{run}.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from trackermail.store import ops, schema

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

    def schema_version(self) -> Deferred:
        if self.dialect == "sqlite":
            return self.run(schema.current_version_sqlite)
        return self.run(schema.current_version)

    def add_package(self, name, kind="source", binaries=()):
        return self.run(ops.add_package, name, kind, tuple(binaries))

    def import_sources(self, entries):
        return self.run(ops.import_sources, list(entries))

    def resolve_package(self, name):
        return self.run(ops.resolve_package, name)

    def get_package(self, name):
        return self.run(ops.get_package, name)

    def add_keyword(self, name, is_default, description=""):
        return self.run(ops.add_keyword, name, is_default, description)

    def keywords(self):
        return self.run(ops.keywords)

    def subscribe(self, email, package, active=True, now=0.0):
        return self.run(ops.subscribe, email, package, active, now)

    def unsubscribe(self, email, package):
        return self.run(ops.unsubscribe, email, package)

    def unsubscribe_all(self, email):
        return self.run(ops.unsubscribe_all, email)

    def subscriptions_of(self, email):
        return self.run(ops.subscriptions_of, email)

    def subscribers_of(self, package):
        return self.run(ops.subscribers_of, package)

    def subscribers_for(self, package, keyword):
        return self.run(ops.subscribers_for, package, keyword)

    def default_keywords(self, email):
        return self.run(ops.default_keywords, email)

    def set_default_keywords(self, email, op, keywords):
        return self.run(ops.set_default_keywords, email, op, list(keywords))

    def subscription_keywords(self, email, package):
        return self.run(ops.subscription_keywords, email, package)

    def set_subscription_keywords(self, email, package, op, keywords):
        return self.run(ops.set_subscription_keywords, email, package, op, list(keywords))

    def dump_subscribers(self, packages=()):
        return self.run(ops.dump_subscribers, list(packages))

    def add_team(self, slug, name, owner, public=True):
        return self.run(ops.add_team, slug, name, owner, public)

    def team_add_package(self, slug, package):
        return self.run(ops.team_add_package, slug, package)

    def join_team(self, slug, email):
        return self.run(ops.join_team, slug, email)

    def leave_team(self, slug, email):
        return self.run(ops.leave_team, slug, email)

    def team_packages(self, slug):
        return self.run(ops.team_packages, slug)

    def teams_of(self, email):
        return self.run(ops.teams_of, email)

    def get_team(self, slug):
        return self.run(ops.get_team, slug)

    def record_bounce(self, email, day, hard=True):
        return self.run(ops.record_bounce, email, day, hard)

    def bounce_stats(self, email):
        return self.run(ops.bounce_stats, email)

    def enqueue(self, body, deliveries, now):
        return self.run(ops.enqueue, body, list(deliveries), now)

    def claim_due_deliveries(self, node, now, limit, lease):
        from trackermail.outbound import queue

        return self.run(queue.claim_due, self.dialect, node, now, limit, lease)

    def outbox_summary(self, now):
        return self.run(ops.outbox_summary, now)

    def is_processed(self, digest):
        return self.run(ops.is_processed, digest)

    def news(self, package=None, limit=50):
        return self.run(ops.news, package, limit)

    def stats(self):
        return self.run(ops.stats)
