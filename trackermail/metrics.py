# -*- test-case-name: tests.test_metrics -*-
"""
The tracker's Prometheus metrics: one registry for the process, the
counters and histograms the rest of trackermail feeds through the small
functions below, and the gauges computed when C{/metrics} is scraped.

Events are counted after their effects are committed: a store program may
run more than once (PostgreSQL retries serialization failures) or be rolled
back, so the callers count from the result of C{store.run}, never from
inside a program.

Series (all prefixed C{trackermail_}):

  - C{messages_received_total{service}}: messages a service took in
    (duplicates recognised by the ledger are not counted again).
  - C{messages_processed_total{service,action}}: the same, by outcome
    (C{forwarded}, C{dropped}, C{replied}, C{duplicate}, ...).
  - C{processing_failures_total{kind}}: C{temporary} (retried later) or
    C{permanent} (parked in failed/).
  - C{processing_seconds{service}}: histogram of the time from routing to
    commit of a message.
  - C{deliveries_total{result}}: outbox results, C{sent}, C{retried},
    C{failed}.
  - C{smarthost_refusing}: 1 while the smarthost refuses our mail (the
    session cannot be set up, MAIL FROM or relaying refused, the same RCPT
    refusal across domains), else 0; C{smarthost_refusals_total{reason}}:
    deliveries deferred because of it (C{connect}, C{mail}, C{relay},
    C{pattern}).
  - C{bounces_counted_total}, C{confirmations_sent_total},
    C{unsubscribed_by_bounce_total}, C{unsubscribed_by_link_total}.
  - C{bounces_total{reason,kind,outcome}}: bounces with a reason (DSNs to
    VERP addresses and smarthost refusals), by reason (C{userunknown},
    C{blocked}, ...), C{kind} (C{hard} or C{soft}: how the copy failed) and
    what the policy did (C{counted}, C{recorded}, C{refused},
    C{unsubscribed}, C{ignored}: a copy that had already bounced).
  - C{refusals_by_domain_total{domain,reason}}: copies a destination
    domain refused for reasons of ours (blocked, spam, reputation ...): a
    rate above zero means that domain refuses our mail. At most
    L{MAX_DOMAIN_LABELS} domains get their own label, the first seen; the
    rest count as C{domain="other"}.
  - At scrape time: C{spool_messages{state}} (C{new}, C{failed},
    C{broken}), C{outbox_deliveries{state}} (C{queued}, C{sending},
    C{failed}), C{outbox_oldest_due_age_seconds} (how late the most
    overdue queued delivery is; 0 when nothing is due), C{store_up}.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from trackermail.ingress.spool import spool_counts

__all__ = [
    "REGISTRY",
    "message_received",
    "processed",
    "processing_failed",
    "deliveries",
    "smarthost_refusing",
    "smarthost_refusal",
    "bounce_counted",
    "bounce_handled",
    "bounce_results",
    "confirmation_sent",
    "unsubscribed_by_bounce",
    "unsubscribed_by_link",
    "spool_depth",
    "StateSnapshot",
    "render",
]

# The *_created series double the output and no dashboard of ours uses them.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

_received = Counter(
    "trackermail_messages_received", "Messages taken in, by service.",
    ["service"], registry=REGISTRY,
)
_processed = Counter(
    "trackermail_messages_processed", "Messages processed, by service and outcome.",
    ["service", "action"], registry=REGISTRY,
)
_failures = Counter(
    "trackermail_processing_failures",
    "Processing attempts that failed: temporary (retried) or permanent (failed/).",
    ["kind"], registry=REGISTRY,
)
_latency = Histogram(
    "trackermail_processing_seconds", "Time from routing a message to its commit.",
    ["service"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
_deliveries = Counter(
    "trackermail_deliveries", "Outbox delivery results: sent, retried, failed.",
    ["result"], registry=REGISTRY,
)
_bounces = Counter(
    "trackermail_bounces_counted", "Hard bounces counted against an address.",
    registry=REGISTRY,
)
_bounce_events = Counter(
    "trackermail_bounces",
    "Bounces by reason, hard or soft, and what the policy did.",
    ["reason", "kind", "outcome"], registry=REGISTRY,
)
_refusals = Counter(
    "trackermail_refusals_by_domain",
    "Copies a destination domain refused for reasons of ours, by domain and reason.",
    ["domain", "reason"], registry=REGISTRY,
)
_confirmations = Counter(
    "trackermail_confirmations_sent", "Confirmation (CONFIRM key) mails queued.",
    registry=REGISTRY,
)
_unsub_bounce = Counter(
    "trackermail_unsubscribed_by_bounce",
    "Addresses unsubscribed from everything because all their mail bounced.",
    registry=REGISTRY,
)
_unsub_link = Counter(
    "trackermail_unsubscribed_by_link",
    "Subscriptions ended through the one-click unsubscribe link.",
    registry=REGISTRY,
)

_refusing = Gauge(
    "trackermail_smarthost_refusing",
    "1 while the smarthost refuses our mail (deliveries are deferred), else 0.",
    registry=REGISTRY,
)
_smarthost_refusals = Counter(
    "trackermail_smarthost_refusals",
    "Deliveries deferred because the smarthost refused them, by reason.",
    ["reason"], registry=REGISTRY,
)

for _reason in ("connect", "mail", "relay", "pattern"):
    _smarthost_refusals.labels(reason=_reason)
for _result in ("sent", "retried", "failed"):
    _deliveries.labels(result=_result)
for _kind in ("temporary", "permanent"):
    _failures.labels(kind=_kind)


# ---------------------------------------------------------------------------
# Events


def message_received(service: str) -> None:
    _received.labels(service=service).inc()


def processed(service: str, action: str, seconds: float,
              fields: Mapping[str, Any] | None = None) -> None:
    """
    A message was committed by C{service} with outcome C{action} after
    C{seconds}. Counts it as received unless it was a duplicate, and reads
    what the services report in their outcome: a bounce C{counted} or
    C{unsubscribed}, the C{confirmations} a control mail queued.
    """
    _processed.labels(service=service, action=action).inc()
    if action == "duplicate":
        return
    message_received(service)
    _latency.labels(service=service).observe(max(0.0, seconds))
    if service == "bounces" and action in ("counted", "unsubscribed"):
        bounce_counted()
        if action == "unsubscribed":
            unsubscribed_by_bounce()
    if service == "bounces":
        bounce_handled(fields or {}, action)
    confirmations = (fields or {}).get("confirmations")
    if isinstance(confirmations, int) and not isinstance(confirmations, bool):
        confirmation_sent(confirmations)


def processing_failed(permanent: bool) -> None:
    _failures.labels(kind="permanent" if permanent else "temporary").inc()


def deliveries(sent: int = 0, retried: int = 0, failed: int = 0) -> None:
    for result, n in (("sent", sent), ("retried", retried), ("failed", failed)):
        if n > 0:
            _deliveries.labels(result=result).inc(n)


def smarthost_refusing(refusing: bool) -> None:
    _refusing.set(1 if refusing else 0)


def smarthost_refusal(reason: str, n: int = 1) -> None:
    if n > 0:
        _smarthost_refusals.labels(reason=reason).inc(n)


def bounce_counted(n: int = 1) -> None:
    if n > 0:
        _bounces.inc(n)


MAX_DOMAIN_LABELS = 50
_LABEL_MAX = 64
_domains_labelled: set[str] = set()


def _label(value: Any, default: str) -> str:
    text = str(value) if value else default
    return text[:_LABEL_MAX]


def bounce_handled(fields: Mapping[str, Any], outcome: str) -> None:
    """
    A bounce with a reason was handled (C{fields} as the bounce policy's
    outcome carries them: C{reason}, C{kind}, C{group}, C{domain}); nothing
    for bounces that got no reason (not a bounce, forged, too old).
    """
    reason = fields.get("reason")
    if not reason:
        return
    kind = "hard" if fields.get("kind") == "hard" else "soft"
    _bounce_events.labels(reason=_label(reason, "undefined"), kind=kind,
                          outcome=_label(outcome, "unknown")).inc()
    if fields.get("group") == "ours" and outcome == "refused":
        domain = _label(fields.get("domain"), "other").lower()
        if domain not in _domains_labelled:
            if len(_domains_labelled) >= MAX_DOMAIN_LABELS:
                domain = "other"
            else:
                _domains_labelled.add(domain)
        _refusals.labels(domain=domain, reason=_label(reason, "undefined")).inc()


def bounce_results(results: Iterable[Any]) -> None:
    """
    What the smarthost hook did for each refused copy (its results: None,
    or an action string with the outcome's C{fields}).
    """
    for result in results:
        fields = getattr(result, "fields", None)
        if result and fields:
            bounce_handled(fields, str(result))


def confirmation_sent(n: int = 1) -> None:
    if n > 0:
        _confirmations.inc(n)


def unsubscribed_by_bounce(n: int = 1) -> None:
    if n > 0:
        _unsub_bounce.inc(n)


def unsubscribed_by_link(n: int = 1) -> None:
    if n > 0:
        _unsub_link.inc(n)


# ---------------------------------------------------------------------------
# Scrape-time state


def spool_depth(spool_path: str) -> dict[str, int | None]:
    """
    Messages in the spool's C{new/}, C{failed/} and C{broken/}; a directory
    that cannot be read gives None for its state.
    """
    try:
        return {state: n for state, (n, _) in spool_counts(spool_path).items()}
    except OSError:
        return {"new": None, "failed": None, "broken": None}


class StateSnapshot:
    """
    The gauges of one scrape: spool depth and the outbox summary (an
    L{trackermail.store.interface.OutboxSummary}, or None when the store
    did not answer), read just before rendering.
    """

    def __init__(self, spool: Mapping[str, int | None] | None, outbox: Any, now: float):
        self.spool = spool or {}
        self.outbox = outbox
        self.now = now

    def collect(self) -> Iterable[GaugeMetricFamily]:
        spool = GaugeMetricFamily("trackermail_spool_messages",
                                  "Messages in the spool, by state.", labels=["state"])
        for state in ("new", "failed", "broken"):
            value = self.spool.get(state)
            if value is not None:
                spool.add_metric([state], value)
        yield spool
        yield GaugeMetricFamily("trackermail_store_up",
                                "1 when the store answered this scrape, else 0.",
                                value=0 if self.outbox is None else 1)
        if self.outbox is None:
            return
        depth = GaugeMetricFamily("trackermail_outbox_deliveries",
                                  "Deliveries in the outbox, by state "
                                  "(queued + sending is the depth).", labels=["state"])
        for state in ("queued", "sending", "failed"):
            depth.add_metric([state], getattr(self.outbox, state))
        yield depth
        oldest = self.outbox.oldest_due
        age = 0.0 if oldest is None else max(0.0, self.now - float(oldest))
        yield GaugeMetricFamily("trackermail_outbox_oldest_due_age_seconds",
                                "How long the most overdue queued delivery has been due.",
                                value=age)


class _Scrape:
    def __init__(self, registry: CollectorRegistry, snapshot: StateSnapshot | None):
        self.registry = registry
        self.snapshot = snapshot

    def collect(self):
        yield from self.registry.collect()
        if self.snapshot is not None:
            yield from self.snapshot.collect()


def render(snapshot: StateSnapshot | None = None, accept: str | None = None,
           registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """
    The exposition text of the registry plus C{snapshot}'s gauges, in the
    format C{accept} (an HTTP Accept header) asks for: Prometheus text
    unless OpenMetrics is asked for. Returns C{(body, content_type)}.
    """
    encoder, content_type = choose_encoder(accept or "")
    return encoder(_Scrape(registry, snapshot)), content_type
