# -*- test-case-name: tests.store.test_store -*-
"""
The store's interface and the values it returns.

Callers never write SQL: they call these intention-revealing methods, each
returning a Deferred. Handlers that must change several things atomically
(a control mail: its state changes, its reply and confirmation mails, and the
processed-ledger row) run one program of L{trackermail.store.ops} through
L{IStore.run}, which is one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from zope.interface import Attribute, Interface


@dataclass(frozen=True)
class Keyword:
    name: str
    is_default: bool
    description: str


@dataclass(frozen=True)
class PackageInfo:
    name: str
    kind: str  # source | pseudo | other


@dataclass(frozen=True)
class Resolution:
    """
    What a name given by a user turned out to be.

    C{kind} is C{source}, C{pseudo}, C{other} (known only as a name),
    C{binary} (C{source} is then the source package it belongs to) or
    C{unknown}.
    """

    name: str
    kind: str
    source: str


@dataclass(frozen=True)
class Team:
    slug: str
    name: str
    public: bool
    owner: str | None


@dataclass(frozen=True)
class Delivery:
    id: int
    message_id: int
    recipient: str
    sender: str
    attempts: int
    created: float
    prefix: bytes = b""


@dataclass(frozen=True)
class OutboxSummary:
    queued: int
    sending: int
    sent: int
    failed: int
    oldest_due: float | None


@dataclass(frozen=True)
class BounceDay:
    day: str
    sent: int
    bounced: int


@dataclass(frozen=True)
class NewsItem:
    id: int
    package: str
    title: str
    content: bytes
    content_type: str
    created_by: str
    created: float


@dataclass(frozen=True)
class Stats:
    packages: int
    binaries: int
    emails: int
    subscriptions: int
    teams: int
    keywords: int
    news: int
    outbox_queued: int
    processed: int
    schema_version: int


class IStore(Interface):
    """
    Persistent state of the tracker. Every method returns a Deferred.
    """

    dialect = Attribute("'sqlite' or 'postgresql'")

    def start():
        """Connect and check the schema is current. Fires when ready."""

    def close():
        """Disconnect. Fires when closed."""

    def migrate():
        """Create or upgrade the schema; idempotent. Fires with the version."""

    def run(program, *args, **kwargs):
        """
        Run C{program(*args, **kwargs)} (a store program, see
        L{trackermail.store.sql}) in one transaction; fires with its value.
        """

    def schema_version():
        """Fires with the stored schema version (0 when none)."""

    # Packages
    def add_package(name, kind="source", binaries=()):
        """Create a source or pseudo package (idempotent) with binaries."""

    def import_sources(entries):
        """Bulk-create (source, [binary...]) pairs; fires with (sources, binaries)."""

    def resolve_package(name):
        """Fires with a L{Resolution} for a user-given name."""

    # Keywords
    def add_keyword(name, is_default, description):
        """Create a keyword."""

    def keywords():
        """Fires with every L{Keyword}, by name."""

    # Subscriptions
    def subscribe(email, package, active=True):
        """Subscribe (or re-activate) email to package; fires with True if new."""

    def unsubscribe(email, package):
        """Fires with True if there was a subscription to remove."""

    def unsubscribe_all(email):
        """Remove every subscription; fires with the package names."""

    def subscriptions_of(email):
        """Fires with the package names email is actively subscribed to."""

    def subscribers_of(package):
        """Fires with the active subscribers' emails, sorted."""

    def subscribers_for(package, keyword):
        """
        Fires with the emails that must get mail of C{keyword} about
        C{package}: direct subscribers and unmuted team members, each once.
        """

    def default_keywords(email):
        """Fires with the user's default keyword names (a frozenset)."""

    def set_default_keywords(email, op, keywords):
        """Apply op (+, - or =) to the default set; fires with the new set."""

    def subscription_keywords(email, package):
        """Fires with the subscription's effective keyword set."""

    def set_subscription_keywords(email, package, op, keywords):
        """Apply op to the subscription's own set; fires with the new set."""

    def dump_subscribers(packages=()):
        """Fires with {package: [emails]} (all packages when none given)."""

    # Teams
    def add_team(slug, name, owner, public=True):
        """Create a team."""

    def team_add_package(slug, package):
        """Add a package to a team."""

    def join_team(slug, email):
        """Make email a member; fires with True if new."""

    def leave_team(slug, email):
        """Fires with True if email was a member."""

    def team_packages(slug):
        """Fires with the team's package names."""

    def teams_of(email):
        """Fires with the L{Team}s email is a member of."""

    def get_team(slug):
        """Fires with the L{Team} or None."""

    # Bounces
    def record_bounce(email, day, hard=True):
        """Count a (hard or soft) bounce for email on day."""

    def bounce_stats(email):
        """Fires with the address's L{BounceDay}s, newest first."""

    # Outbox
    def enqueue(body, deliveries, now):
        """Store body once and a delivery per (recipient, sender)."""

    def claim_due_deliveries(node, now, limit, lease):
        """Claim up to limit due deliveries for node; fires with L{Delivery}s."""

    def outbox_summary(now):
        """Fires with an L{OutboxSummary}."""

    # Ledger, news, stats
    def is_processed(digest):
        """Fires with True if a message with this digest was processed."""

    def news(package=None, limit=50):
        """Fires with L{NewsItem}s, newest first."""

    def stats():
        """Fires with L{Stats}."""
