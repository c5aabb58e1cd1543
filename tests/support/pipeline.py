"""
A whole pipeline on an in-memory store, for handler tests: feed raw mail,
read the outbox.
"""

from __future__ import annotations

import email
import email.policy

from tests.support.stores import make_memory_store
from trackermail.config import config_from_dict
from trackermail.processing import Processor
from trackermail.service import default_handlers
from trackermail.store.outbox import outbox_body
from trackermail.store.sql import Rows

FQDN = "tracker.example.org"
NOW = 1_795_000_000.0  # 2026-11-18


def make_config(**sections):
    raw = {"tracker": {"fqdn": FQDN, "secret_key": "test-secret-key-0123456789"}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw)


class FakeClock:
    def __init__(self, now: float = NOW):
        self.now = now

    def seconds(self) -> float:
        return self.now


def make_pipeline(testcase, vendor: str = "debian", **sections):
    """(processor, store, clock) on a fresh in-memory store."""
    from trackermail.vendor import load_vendor

    store = make_memory_store(testcase)
    config = make_config(**sections) if "tracker" in sections else make_config(
        tracker={"vendor": vendor}, **sections)
    clock = FakeClock()
    processor = Processor(config, store, default_handlers(),
                          vendor=load_vendor(config.tracker.vendor), clock=clock)
    # Synchronous tests: parse big messages in the test's thread too.
    processor.thread_parse_over = None
    return processor, store, clock


def deliver(testcase, processor, to: str, body: bytes):
    """Process a message as if spooled for C{to}; return the Outcome."""
    raw = f"Delivered-To: {to}\r\nReturn-Path: <sender@example.net>\r\n".encode() + body
    return testcase.successResultOf(processor.process_bytes(raw))


def outbox(testcase, store):
    """[(recipient, sender, parsed copy)] of every queued delivery, in order."""
    def program():
        rows = yield Rows(
            "SELECT recipient, sender, prefix, message_id FROM outbox_deliveries ORDER BY id")
        bodies = {}
        for *_, mid in rows:
            if mid not in bodies:
                bodies[mid] = yield from outbox_body(mid)
        return [(rcpt, sender, prefix, bodies[mid]) for rcpt, sender, prefix, mid in rows]

    rows = testcase.successResultOf(store.run(program))
    result = []
    for rcpt, sender, prefix, body in rows:
        data = (bytes(prefix) if prefix else b"") + bytes(body)
        result.append((rcpt, sender, data))
    return result


def parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)
