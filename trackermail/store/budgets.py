# -*- test-case-name: tests.control.test_budgets -*-
"""
Daily budgets of the control bot, per address.

Anyone can write to C{control@} with any From: line, so every mail the bot
sends on a stranger's word is counted:

  - mails to an address that did not necessarily ask for them (CONFIRM
    mails and notices), against C{[control] max_confirmations_per_day};
  - replies to one sender, against C{[control] max_replies_per_day}.

Both count by L{budget_key}: C{jane+1@example.org} and C{jane+2@…} are the
same mailbox for most mail systems, so they share the budget of
C{jane@example.org}.
"""

from __future__ import annotations

from trackermail.store.sql import Later, Value
from trackermail.validation import normalize_email


def budget_key(email: str) -> str:
    """
    The address a budget is counted for: lower case, without the
    C{+suffix} of the local part (C{Jane+lists@X.org} -> C{jane@x.org}).
    """
    local, _, domain = normalize_email(email).lower().rpartition("@")
    base = local.split("+", 1)[0]
    return f"{base or local}@{domain}"


def count_unsolicited(email: str, day: str, limit: int):
    """
    Count one mail to C{email} on C{day} if its budget allows it; fires
    with True when the mail may be sent.
    """
    key = budget_key(email)
    sent = yield Value(
        "SELECT sent FROM confirmation_sends WHERE email_lower = ? AND day = ?", (key, day)
    )
    if (sent or 0) >= limit:
        return False
    yield Later(
        "INSERT INTO confirmation_sends (email_lower, day, sent) VALUES (?, ?, 1) "
        "ON CONFLICT (email_lower, day) DO UPDATE SET sent = confirmation_sends.sent + 1",
        (key, day),
    )
    return True


def unsolicited_today(email: str, day: str):
    """How many counted mails went to C{email}'s budget on C{day}."""
    sent = yield Value(
        "SELECT sent FROM confirmation_sends WHERE email_lower = ? AND day = ?",
        (budget_key(email), day),
    )
    return sent or 0


def replies_today(email: str, day: str):
    """How many counted replies went to C{email}'s budget on C{day}."""
    sent = yield Value(
        "SELECT sent FROM control_replies WHERE address = ? AND day = ?",
        (budget_key(email), day),
    )
    return sent or 0


def count_reply(email: str, day: str):
    """Count one reply to C{email} on C{day}; fires with the day's count so far."""
    key = budget_key(email)
    yield Later(
        "INSERT INTO control_replies (address, day, sent) VALUES (?, ?, 1) "
        "ON CONFLICT (address, day) DO UPDATE SET sent = control_replies.sent + 1",
        (key, day),
    )
    return (yield from replies_today(email, day))


def purge_budgets(today: str):
    """Forget the counters of days before C{today}."""
    yield Later("DELETE FROM confirmation_sends WHERE day < ?", (today,))
    yield Later("DELETE FROM control_replies WHERE day < ?", (today,))
