# -*- test-case-name: tests.control.test_confirmations -*-
"""
Confirmation keys of the control bot and the daily count of confirmation
mails per address.
"""

from __future__ import annotations

import json
import secrets

from trackermail.store.sql import Exec, Row, Rows, Value
from trackermail.validation import normalize_email


def create_confirmation(key: str, email: str, commands: list, now: float):
    yield Exec(
        "INSERT INTO confirmations (confirm_key, email_lower, commands, created) "
        "VALUES (?, ?, ?, ?)",
        (key, normalize_email(email).lower(), json.dumps(commands), now),
    )


def take_confirmation(key: str, now: float, expiry: float):
    """
    Consume a confirmation key: fires with C{(email_lower, commands)}, or with
    a reason string (C{"unknown"}, C{"used"}, C{"expired"}) when it cannot be
    used. Single use: the row is marked used in this transaction.
    """
    row = yield Row(
        "SELECT id, email_lower, commands, created, used FROM confirmations "
        "WHERE confirm_key = ?",
        (key,),
    )
    if row is None:
        return "unknown"
    cid, email, commands, created, used = row
    if used is not None:
        return "used"
    if created <= now - expiry:
        return "expired"
    count = yield Exec(
        "UPDATE confirmations SET used = ? WHERE id = ? AND used IS NULL", (now, cid)
    )
    if count == 0:
        return "used"
    return email, json.loads(commands)


def count_confirmation_send(email: str, day: str, limit: int):
    """
    Count one confirmation mail to C{email} on C{day} if under C{limit};
    fires with True when it may be sent.
    """
    key = normalize_email(email).lower()
    sent = yield Value(
        "SELECT sent FROM confirmation_sends WHERE email_lower = ? AND day = ?", (key, day)
    )
    if (sent or 0) >= limit:
        return False
    yield Exec(
        "INSERT INTO confirmation_sends (email_lower, day, sent) VALUES (?, ?, 1) "
        "ON CONFLICT (email_lower, day) DO UPDATE SET sent = confirmation_sends.sent + 1",
        (key, day),
    )
    return True


def purge_confirmations(now: float, expiry: float, today: str = ""):
    """
    Forget expired confirmations, and the per-day send counters of days
    before C{today}. Fires with the number of confirmations removed.
    """
    removed = yield Exec("DELETE FROM confirmations WHERE created <= ?", (now - expiry,))
    if today:
        yield Exec("DELETE FROM confirmation_sends WHERE day < ?", (today,))
    return removed


#: 24 random bytes: 192 bits, 32 URL-safe characters.
KEY_BYTES = 24


def canonical_command(stored) -> tuple:
    return tuple(str(part).lower() for part in stored)


def pending_keys(email: str, now: float, expiry: float):
    """C{[(key, commands)]} of the unused, unexpired keys of an address, oldest first."""
    rows = yield Rows(
        "SELECT confirm_key, commands FROM confirmations WHERE email_lower = ? "
        "AND used IS NULL AND created > ? ORDER BY created, id",
        (email.lower(), now - expiry),
    )
    return [(key, json.loads(commands)) for key, commands in rows]


def reserve_key(email: str, commands: list, now: float, expiry: float):
    """
    The key to mail to C{email} for C{commands}, keeping at most one pending
    key per (command, address): fires with C{(key, listed commands)}.

    A pending key that already holds every one of these commands is sent
    again as it is. Otherwise the commands are taken out of older pending
    keys (a key left empty is deleted) and a new key holds them.
    """
    wanted = {canonical_command(c) for c in commands}
    existing = yield from pending_keys(email, now, expiry)
    for key, stored in existing:
        if wanted <= {canonical_command(c) for c in stored}:
            return key, stored
    for key, stored in existing:
        remaining = [c for c in stored if canonical_command(c) not in wanted]
        if len(remaining) == len(stored):
            continue
        if remaining:
            yield Exec(
                "UPDATE confirmations SET commands = ? WHERE confirm_key = ? AND used IS NULL",
                (json.dumps(remaining), key),
            )
        else:
            yield Exec(
                "DELETE FROM confirmations WHERE confirm_key = ? AND used IS NULL", (key,)
            )
    key = secrets.token_urlsafe(KEY_BYTES)
    yield from create_confirmation(key, email, list(commands), now)
    return key, list(commands)
