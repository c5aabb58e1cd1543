# -*- test-case-name: tests.control.test_confirmations -*-
"""
Confirmation keys of the control bot (the daily counts of mails per
address live in L{trackermail.store.budgets}).
"""

from __future__ import annotations

import json
import secrets

from trackermail.store.budgets import count_unsolicited, purge_budgets
from trackermail.store.sql import Exec, Later, Row, Rows
from trackermail.validation import normalize_email


def create_confirmation(key: str, email: str, commands: list, now: float):
    yield Later(
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


#: The old name of L{count_unsolicited}: a CONFIRM mail is one of the mails
#: an address gets without having asked for it.
count_confirmation_send = count_unsolicited


def purge_confirmations(now: float, expiry: float, today: str = ""):
    """
    Forget expired confirmations, and the per-day send counters of days
    before C{today}. Fires with the number of confirmations removed.
    """
    removed = yield Exec("DELETE FROM confirmations WHERE created <= ?", (now - expiry,))
    if today:
        yield from purge_budgets(today)
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
            yield Later(
                "UPDATE confirmations SET commands = ? WHERE confirm_key = ? AND used IS NULL",
                (json.dumps(remaining), key),
            )
        else:
            yield Later(
                "DELETE FROM confirmations WHERE confirm_key = ? AND used IS NULL", (key,)
            )
    key = secrets.token_urlsafe(KEY_BYTES)
    yield from create_confirmation(key, email, list(commands), now)
    return key, list(commands)
