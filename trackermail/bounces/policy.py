# -*- test-case-name: tests.bounces.test_policy -*-
"""
The bounce policy: what a bounce to C{bounces+…@FQDN} (or a 5xx from the
smarthost) does to the address it names.

- The VERP address must carry a valid tag: anyone can mail bounces+…@, and
  must not be able to unsubscribe someone else. Forged or expired ones are
  logged and ignored.
- Bounces caused by our mail being classed as spam or malware are dropped:
  the address works, the content was refused.
- A hard bounce is counted for the address on the day the copy was sent;
  soft bounces are recorded but not counted; auto-replies are ignored.
- When, on each of the last C{max_days_tolerate_bounce} days on which mail
  was sent to the address, every mail bounced, the address is unsubscribed
  from all packages, its team memberships are muted, and it is sent a notice
  (copied to the contact address) listing what was removed — in the same
  transaction as the bounce.
"""

from __future__ import annotations

import datetime as dt

from twisted.logger import Logger

from trackermail.bounces import verp
from trackermail.bounces.analyzer import detect
from trackermail.bounces.spamtext import is_spam_rejection
from trackermail.handling import Outcome
from trackermail.message import build_mail
from trackermail.store.bounce_stats import (
    recent_mail_days,
    record_bounce,
    trim_bounce_stats,
)
from trackermail.store.emails import email_id, email_of_id
from trackermail.store.outbox import enqueue
from trackermail.store.subscriptions import unsubscribe_all
from trackermail.store.teams import mute_all_memberships

log = Logger()


def _day(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%d")


def evaluate(email: str, ctx, max_days: int):
    """
    Store program: apply the unsubscription rule to C{email}. Fires with the
    list of packages removed (empty when the address is kept).
    """
    eid = yield from email_id(email, create=False)
    if eid is None:
        return None
    rows = yield from recent_mail_days(eid, max_days)
    yield from trim_bounce_stats(email, max_days)
    if len(rows) < max_days or any(bounced < sent for _, sent, bounced in rows):
        return None
    packages = yield from unsubscribe_all(email)
    teams = yield from mute_all_memberships(email)
    fqdn = ctx.fqdn
    lines = [
        f"Mail the package tracker at {fqdn} sent to {email} bounced on each of the",
        f"last {max_days} days it was sent mail, so the tracker stopped sending it.",
        "",
    ]
    if packages:
        lines.append("Unsubscribed from these packages:")
        lines.extend(f"  {p}" for p in packages)
    else:
        lines.append("There were no package subscriptions to remove.")
    if teams:
        lines.append("")
        lines.append("Muted the membership of these teams:")
        lines.extend(f"  {t}" for t in teams)
    lines += ["", f"To subscribe again, write to control@{fqdn}.", ""]
    contact = ctx.config.tracker.contact_address
    body = build_mail(
        fqdn=fqdn,
        from_=f"control@{fqdn}",
        to=email,
        cc=[contact],
        subject=f"All your mail from {fqdn} is bouncing",
        body="\n".join(lines),
        headers=[("X-Loop", f"control@{fqdn}"), ("Auto-Submitted", "auto-generated")],
        now=ctx.now,
    )
    yield from enqueue(body, [(email, ""), (contact, "")], ctx.now)
    log.warn("unsubscribed {email} after {days} days of bounces: packages {packages},"
             " muted teams {teams}", email=email, days=max_days,
             packages=packages, teams=teams)
    return packages


def handle_bounces(incoming, ctx):
    """
    Store program for mail to C{bounces+…@FQDN}.
    """

    secret = ctx.config.tracker.secret_key
    local = getattr(incoming.route, "verp", None) or ""
    try:
        info = verp.decode_local(local, secret)
    except verp.InvalidVerp as e:
        return Outcome("dropped", f"not a VERP address of ours ({e})")
    today = dt.datetime.fromtimestamp(ctx.now, dt.timezone.utc).date()
    max_days = ctx.config.bounces.max_days_tolerate_bounce
    if verp.is_expired(info, today):
        return Outcome("dropped", f"a bounce of mail sent on {info.day}, too old")
    email = info.email
    if email is None:
        email = yield from email_of_id(info.email_id)
        if email is None:
            return Outcome("dropped", f"the address with id {info.email_id} is gone")
    analysis = detect(incoming.msg)
    if analysis.is_auto_reply():
        return Outcome("ignored", f"an auto-reply from {email}", {"email": email})
    if not analysis.probable():
        return Outcome("ignored", f"not a bounce (score {analysis.score:.2f})",
                       {"email": email})
    code, text = analysis.diagnostic_codes
    texts = [f"{code or ''} {text}"] if text else []
    texts += [r.diagnostic for r in analysis.recipients if r.diagnostic]
    if any(is_spam_rejection(t) for t in texts):
        return Outcome("ignored", f"our mail to {email} was refused as spam or malware",
                       {"email": email})
    if (yield from email_id(email, create=False)) is None:
        return Outcome("ignored", f"{email} is not known", {"email": email})
    hard = analysis.is_hard()
    yield from record_bounce(email, info.day.isoformat(), hard=hard)
    if not hard:
        return Outcome("recorded", f"a soft bounce for {email}", {"email": email})
    removed = yield from evaluate(email, ctx, max_days)
    if removed is not None:
        return Outcome("unsubscribed", f"{email} after {max_days} days of bounces",
                       {"email": email, "packages": removed})
    return Outcome("counted", f"a hard bounce for {email} on {info.day}", {"email": email})


def permanent_failure(ctx_factory):
    """
    The outbox sender's C{on_permanent_failure} hook: a 5xx from the
    smarthost for a recipient counts as a hard bounce of that address.
    C{ctx_factory(now)} gives the handler context.
    """

    def hook(recipient, sender, code, text, now):
        # Fires with "counted", "unsubscribed" (counted, and the address
        # removed) or None, for the sender's metrics.
        if is_spam_rejection(f"{code} {text}"):
            return None
        ctx = ctx_factory(now)
        day = _day(now)
        if sender:
            try:
                info = verp.decode(sender, ctx.config.tracker.secret_key, ctx.fqdn)
                day = info.day.isoformat()
            except verp.InvalidVerp:
                return None  # not a fan-out copy (a control reply): no bounce policy
        else:
            return None
        if (yield from email_id(recipient, create=False)) is None:
            return None
        yield from record_bounce(recipient, day, hard=True)
        removed = yield from evaluate(recipient, ctx,
                                      ctx.config.bounces.max_days_tolerate_bounce)
        return "counted" if removed is None else "unsubscribed"

    return hook
