# -*- test-case-name: tests.bounces.test_policy -*-
"""
The bounce policy: what a bounce to C{bounces+…@FQDN} (or a 5xx from the
smarthost at RCPT) does to the address it names.

- The VERP address must carry a valid tag: anyone can mail bounces+…@, and
  must not be able to unsubscribe someone else. Forged or expired ones are
  logged and ignored; so are auto-replies, mail that is not a bounce, and
  warnings that a copy is only delayed.
- A bounce for one copy counts once: the copy its address names
  (L{trackermail.bounces.verp.VerpInfo.copy}) is recorded, and a second
  bounce for it (a replay, a DSN after the smarthost refused the copy) is
  ignored. Version-1 addresses and distro-tracker's name no copy; their
  bounces are told apart by the day, the address and the Message-ID of the
  returned message when the bounce has it (else each bounce counts).
- Each bounce gets a reason and an effect (L{trackermail.bounces.verdict}
  has the table):

  - C{refused} (our side: blocked, bad reputation, spam, authentication
    ...): never counted against the address, and the copy no longer counts
    as mail sent to it. Counted per destination domain and reason, with a
    log line ("gmail.com refuses our mail (blocked) since 10:40") at the
    first of each day, in C{trackermail bounces} and in the metrics.
  - C{hard} (the address is gone): when, on each of the last
    C{[bounces] max_days_tolerate_bounce} mail days of the address, every
    copy bounced hard, the address is removed.
  - C{soft} (mailbox full, over quota, a bounce with nothing readable,
    expired, filtered, system errors): when, on each of the last
    C{[bounces] max_days_tolerate_soft} mail days, every copy bounced (hard
    or soft), the address is removed.

  Removing an address unsubscribes it from all packages, mutes its team
  memberships and sends it a notice (copied to the contact address)
  listing what was removed, in the same transaction as the bounce. A
  I{mail day} is a day on which copies were sent to the address that our
  side did not get refused.
- Bounces to distro-tracker's own, unsigned addresses
  (L{trackermail.bounces.legacy}) count only while
  C{[bounces] legacy_verp_until} has not passed, for copies sent in the last
  7 days, to an address that still gets mail, when the analyzer calls the
  bounce hard; then the rules above apply. Anything else in that form is
  ignored with a log line saying why.
"""

from __future__ import annotations

import datetime as dt

from twisted.logger import Logger

from trackermail.bounces import legacy, verp
from trackermail.bounces.analyzer import detect
from trackermail.bounces.mime import header
from trackermail.bounces.verdict import (
    Verdict,
    from_analysis,
    from_reply,
    is_delay_warning,
)
from trackermail.errors import InvalidValue
from trackermail.handling import Outcome
from trackermail.message import build_mail
from trackermail.store.bounce_domains import (
    record_domain_bounce,
    refusing_since,
    trim_domain_bounces,
)
from trackermail.store.bounce_stats import (
    mail_days,
    mark_copy_bounced,
    receives_mail,
    record_effect,
    trim_all_bounce_stats,
    trim_bounce_stats,
    trim_bounced_copies,
)
from trackermail.store.emails import email_id, email_of_id
from trackermail.store.outbox import enqueue
from trackermail.store.subscriptions import unsubscribe_all
from trackermail.store.teams import mute_all_memberships

log = Logger()


def _date(now: float) -> dt.date:
    return dt.datetime.fromtimestamp(now, dt.timezone.utc).date()


def standing(days) -> tuple[int, int]:
    """
    C{(hard, bounced)}: how many of the latest mail days (L{MailDay}s,
    newest first), in a row, every copy bounced hard, and bounced at all.
    """
    hard = bounced = 0
    for day in days:
        if not day.all_bounced:
            break
        bounced += 1
        if day.all_hard and hard == bounced - 1:
            hard += 1
    return hard, bounced


def thresholds(config) -> tuple[int, int]:
    """The mail days of hard and of any bounces after which an address goes."""
    return (config.bounces.max_days_tolerate_bounce, config.bounces.max_days_tolerate_soft)


def evaluate(email: str, ctx, verdict: Verdict | None = None):
    """
    Store program: apply the unsubscription rules to C{email} after a
    bounce (C{verdict}, for the notice). Fires with the list of packages
    removed, None when the address is kept.
    """
    eid = yield from email_id(email, create=False)
    if eid is None:
        return None
    hard_days, soft_days = thresholds(ctx.config)
    keep = max(hard_days, soft_days)
    days = yield from mail_days(eid, keep)
    yield from trim_bounce_stats(email, keep)
    hard, bounced = standing(days)
    if hard >= hard_days:
        max_days, what = hard_days, "bounced"
    elif bounced >= soft_days:
        max_days, what = soft_days, "could not be delivered"
    else:
        return None
    packages = yield from unsubscribe_all(email)
    teams = yield from mute_all_memberships(email)
    fqdn = ctx.fqdn
    lines = [
        f"Mail the package tracker at {fqdn} sent to {email} {what} on each of the",
        f"last {max_days} days it was sent mail, so the tracker stopped sending it.",
    ]
    if verdict is not None:
        lines.append(f"The last bounce ({verdict.reason}) said: {verdict.diagnostic[:300]}"
                     if verdict.diagnostic else f"The last bounce: {verdict.reason}.")
    lines.append("")
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
    yield from enqueue(body, [(email, ""), (contact, "")], ctx.now, origin=ctx.origin)
    log.warn("unsubscribed {email} after {days} mail days of bounces ({reason}):"
             " packages {packages}, muted teams {teams}", email=email, days=max_days,
             reason=verdict.reason if verdict else "", packages=packages, teams=teams)
    return packages


# How long per-domain bounce counts are kept for C{trackermail bounces}.
DOMAIN_DAYS_KEPT = 31


def maintain(now: float, config):
    """
    Store program for the hourly maintenance: keep each address's stats
    from its latest mail days the rules read on, forget copies whose bounces
    would be too old to count and per-domain counts past
    L{DOMAIN_DAYS_KEPT} days. Fires with the number of rows removed.
    """
    today = _date(now)
    stats = yield from trim_all_bounce_stats(
        max(thresholds(config)), (today - dt.timedelta(days=DOMAIN_DAYS_KEPT)).isoformat())
    # A copy dated a day ahead still counts (clock skew), one older than
    # DEFAULT_MAX_AGE_DAYS does not.
    copies = yield from trim_bounced_copies(
        (today - dt.timedelta(days=verp.DEFAULT_MAX_AGE_DAYS + 1)).isoformat())
    domains = yield from trim_domain_bounces(
        (today - dt.timedelta(days=DOMAIN_DAYS_KEPT)).isoformat())
    return stats + copies + domains


def _since_text(since: float | None, now: float) -> str:
    if since is None:
        return ""
    when = dt.datetime.fromtimestamp(since, dt.timezone.utc)
    if when.date() == _date(now):
        return f" since {when:%H:%M} UTC"
    return f" since {when:%Y-%m-%d %H:%M} UTC"


def apply_verdict(ctx, eid: int, email: str, day: str, verdict: Verdict, copy: str | None):
    """
    Store program: count one bounce (C{verdict}) of the copy sent to
    C{email} on C{day}; C{copy} names the copy, when known. Fires with the
    L{Outcome}; its fields carry the reason, kind, group and domain, for
    the metrics.
    """
    domain = email.rpartition("@")[2].lower()
    fields = {"email": email, "reason": verdict.reason, "kind": verdict.kind,
              "group": verdict.group, "domain": domain}
    if copy is not None and not (yield from mark_copy_bounced(copy, day, ctx.now)):
        return Outcome("ignored", f"the copy sent to {email} on {day} already bounced",
                       fields)
    first = yield from record_domain_bounce(ctx.today, domain, verdict.reason, verdict.group,
                                            verdict.hard, ctx.now, verdict.diagnostic)
    yield from record_effect(eid, day, verdict.effect)
    if verdict.effect == "refused":
        since = yield from refusing_since(domain, verdict.reason, ctx.today)
        text = f"{domain} refuses our mail ({verdict.reason}){_since_text(since, ctx.now)}"
        if first:
            log.warn("{domain} refuses our mail ({reason}){since}: {diagnostic}",
                     domain=domain, reason=verdict.reason, since=_since_text(since, ctx.now),
                     diagnostic=verdict.diagnostic[:300])
        return Outcome("refused", f"{text}: not counted against {email}", fields)
    removed = yield from evaluate(email, ctx, verdict)
    if removed is not None:
        return Outcome("unsubscribed", f"{email} after its mail kept bouncing ({verdict.reason})",
                       dict(fields, packages=removed))
    if verdict.effect == "hard":
        return Outcome("counted", f"a hard bounce for {email} on {day} ({verdict.reason})",
                       fields)
    return Outcome("recorded", f"a soft bounce for {email} on {day} ({verdict.reason})",
                   fields)


def _original_copy(analysis, form: str, day: dt.date, email: str) -> str | None:
    """
    The identity of the copy a bounce to an address that names none is
    for: the day, the recipient and the Message-ID of the returned message,
    when the bounce returned it.
    """
    original = analysis.original
    if original is None:
        return None
    try:
        message_id = " ".join(header(original, "Message-ID").split())
    except Exception:
        return None
    if not message_id:
        return None
    return f"{form}:{day:%Y%m%d}:{email.lower()}:{message_id[:200]}"


def _not_a_bounce(analysis, email: str):
    """Why a message to a VERP address is not a bounce to count, or None."""
    if analysis.is_auto_reply():
        return f"an auto-reply from {email}"
    if not analysis.probable():
        return f"not a bounce (score {analysis.score:.2f})"
    if is_delay_warning(analysis, email):
        return f"a delay warning for {email}: the copy may still be delivered"
    return None


def handle_bounces(incoming, ctx):
    """
    Store program for mail to C{bounces+…@FQDN}.
    """

    secret = ctx.config.tracker.secret_key
    local = getattr(incoming.route, "verp", None) or ""
    try:
        info = verp.decode_local(local, secret)
    except verp.InvalidVerp as e:
        return (yield from _handle_legacy(incoming, ctx, local, e))
    if verp.is_expired(info, _date(ctx.now)):
        return Outcome("dropped", f"a bounce of mail sent on {info.day}, too old")
    email = info.email
    if email is None:
        email = yield from email_of_id(info.email_id)
        if email is None:
            return Outcome("dropped", f"the address with id {info.email_id} is gone")
    analysis = detect(incoming.msg)
    why = _not_a_bounce(analysis, email)
    if why:
        return Outcome("ignored", why, {"email": email})
    eid = yield from email_id(email, create=False)
    if eid is None:
        return Outcome("ignored", f"{email} is not known", {"email": email})
    copy = info.copy or _original_copy(analysis, "v1", info.day, email)
    verdict = from_analysis(analysis, email)
    return (yield from apply_verdict(ctx, eid, email, info.day.isoformat(), verdict, copy))


def _handle_legacy(incoming, ctx, local: str, error: Exception):
    try:
        info = legacy.decode_legacy(local)
    except verp.InvalidVerp:
        return Outcome("dropped", f"not a VERP address of ours ({error})")
    why = legacy.refusal(info, _date(ctx.now), ctx.config.bounces.legacy_verp_until)
    analysis = None
    if why is None and not (yield from receives_mail(info.email)):
        why = f"{info.email} is not subscribed"
    if why is None:
        analysis = detect(incoming.msg)
        why = _not_a_bounce(analysis, info.email)
    verdict = None
    if why is None:
        verdict = from_analysis(analysis, info.email)
        if not verdict.hard:
            why = f"the analyzer does not call it hard ({verdict.reason})"
    if why is not None:
        log.info("bounce to distro-tracker's address for {email} (sent {day}) ignored: {why}",
                 email=info.email, day=info.day.isoformat(), why=why)
        return Outcome("ignored", f"a bounce to distro-tracker's address for {info.email}:"
                       f" {why}", {"email": info.email})
    eid = yield from email_id(info.email, create=False)
    copy = _original_copy(analysis, "dt", info.day, info.email)
    return (yield from apply_verdict(ctx, eid, info.email, info.day.isoformat(), verdict, copy))


class HookResult(str):
    """
    What the smarthost hook did, as the outcome's action (C{"counted"},
    C{"recorded"}, C{"refused"}, C{"unsubscribed"}, C{"ignored"}), with the
    outcome's fields (reason, kind, group, domain) for the metrics.
    """

    fields: dict

    def __new__(cls, action: str, fields: dict):
        self = super().__new__(cls, action)
        self.fields = fields
        return self


def permanent_failure(ctx_factory):
    """
    The outbox sender's C{on_permanent_failure} hook, for a 5xx the
    smarthost gave one recipient at RCPT: the reply is read like a DSN's
    diagnostic (L{from_reply}) and the same rules apply. C{ctx_factory(now)}
    gives the handler context.
    """

    def hook(recipient, sender, code, text, now):
        # Fires with a HookResult, or None when the copy is not a fan-out
        # copy of ours (a control reply) or the address is unknown.
        if not sender:
            return None
        ctx = ctx_factory(now)
        try:
            info = verp.decode(sender, ctx.config.tracker.secret_key, ctx.fqdn)
            eid = yield from email_id(recipient, create=False)
        except (verp.InvalidVerp, InvalidValue):
            return None
        if eid is None:
            return None
        verdict = from_reply(code, text)
        outcome = yield from apply_verdict(ctx, eid, recipient, info.day.isoformat(),
                                           verdict, info.copy)
        return HookResult(outcome.action, outcome.fields)

    return hook
