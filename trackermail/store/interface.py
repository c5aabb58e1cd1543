# -*- test-case-name: tests.store.test_store -*-
"""
The store's interface: a database that runs store programs.

Callers never write SQL. The data logic lives in store programs, one module
per aggregate (L{packages}, L{keywords}, L{subscriptions}, L{teams},
L{confirmations}, L{bounce_stats}, L{outbox}, L{ledger}, L{news}); each is a
generator function that yields SQL operations (see L{trackermail.store.sql})
and returns a value of the type it documents. A caller runs one with
C{store.run(program, *args)}, which is one transaction; programs compose
with C{yield from}, so a handler's state changes, outgoing mail and
processed-ledger row commit together or not at all.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IStore(Interface):
    """
    Persistent state of the tracker. Every method returns a Deferred.
    """

    dialect = Attribute("'sqlite' or 'postgresql'")

    def start():
        """Connect. Fires with the store when it can be used."""

    def close():
        """Disconnect. Fires when closed."""

    def migrate():
        """Create or upgrade the schema; idempotent. Fires with the version."""

    def run(program, *args, **kwargs):
        """
        Run C{program(*args, **kwargs)} (a store program, see
        L{trackermail.store.sql}) in one transaction; fires with its value.
        Driver errors that mean "try again later" fail with
        L{trackermail.errors.StoreUnavailable}.
        """

    def listen(channel, callback):
        """
        Call C{callback()} after any transaction that notified C{channel}
        (a L{trackermail.store.sql.Notify} op): of this process, and on
        PostgreSQL of any node sharing the database. Fires once listening.
        """
