# -*- test-case-name: tests.store.test_store -*-
"""
Addresses: one row per address, unique without regard to case.
"""

from __future__ import annotations

from trackermail.store.sql import Later, Value
from trackermail.validation import normalize_email


def email_id(email: str, create: bool = True):
    """
    The id of an address, created when C{create} (case-insensitively unique).
    Fires with None for an unknown address when not creating.
    """
    email = normalize_email(email)
    key = email.lower()
    found = yield Value("SELECT id FROM emails WHERE email_lower = ?", (key,))
    if found is not None or not create:
        return found
    yield Later(
        "INSERT INTO emails (email, email_lower) VALUES (?, ?) "
        "ON CONFLICT (email_lower) DO NOTHING",
        (email, key),
    )
    return (yield Value("SELECT id FROM emails WHERE email_lower = ?", (key,)))


def email_of_id(eid: int):
    return (yield Value("SELECT email FROM emails WHERE id = ?", (eid,)))
