# -*- test-case-name: tests.bounces.test_policy_reasons -*-
"""
What one bounced copy says about its recipient, for the bounce policy:
the reason (Sisimai's vocabulary, L{trackermail.bounces.reasons}), its
group, whether it failed for good, and what the policy does with it (the
I{effect}):

  ====================  ==========================================  =========
  group                 reasons                                     effect
  ====================  ==========================================  =========
  ours                  blocked, badreputation, spamdetected,       refused
                        virusdetected, requireptr, authfailure,
                        securityerror, norelaying, toomanyconn,
                        speeding, rejected, notcompliantrfc,
                        contenterror, mesgtoobig, syntaxerror,
                        policyviolation naming the sender
  gone                  userunknown, hostunknown, hasmoved,         hard
                        notaccept, suspend                          (soft if
                                                                    transient)
  persistent-soft       mailboxfull, exceedlimit, onhold,           soft
                        undefined (a bounce with nothing readable)
  other                 expired, filtered, systemerror, systemfull, soft
                        networkerror, mailererror, policyviolation
                        about the recipient
  ====================  ==========================================  =========

  - C{refused}: the refusal is about our mail or our server. It never
    counts against the address (the copy is not even a mail sent, for the
    policy); it feeds the per-domain "refusing us" signal.
  - C{hard}: the address is gone. Counted against it at once: the address
    goes after C{[bounces] max_days_tolerate_bounce} mail days of nothing
    but hard bounces. A "gone" reason given as transient (a 4xx, such as a
    mailbox disabled for now) is soft.
  - C{soft}: the address exists (or may) but takes no mail. Counted, and
    the address goes after C{[bounces] max_days_tolerate_soft} mail days of
    nothing but bounces. The other reasons are soft too: C{expired} (a
    destination unreachable for the days of a mail queue's retries; one
    that stays so for two weeks of mail is as good as gone),
    C{filtered} (refused after the message was sent, often an unknown
    user behind a filter; Sisimai calls it soft too), C{systemerror},
    C{systemfull}, C{networkerror}, C{mailererror} (the recipient's system
    fails, maybe for now), and a
    C{policyviolation} that does not name our mail (the recipient's
    organisation refuses outside mail: lasting, but not proof the address
    is gone).

Whatever the reason, a bounce the spam check (L{is_spam_rejection}) reads
as a refusal of our mail for what it is counts as ours, as before reasons
existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from trackermail.bounces.reasons import (
    classify,
    is_spam_rejection,
    reason_group,
    reply_reason,
)

__all__ = ["Verdict", "effect_of", "from_analysis", "from_reply", "is_delay_warning"]


@dataclass(frozen=True)
class Verdict:
    """
    @ivar reason: one of L{trackermail.bounces.reasons.REASONS}.
    @ivar group: C{"ours"}, C{"gone"}, C{"persistent-soft"} or C{"other"}.
    @ivar hard: the copy failed for good (a 5xx, a failed DSN).
    @ivar effect: C{"refused"}, C{"hard"} or C{"soft"} (see the module).
    @ivar diagnostic: the remote explanation, for people.
    """

    reason: str
    group: str
    hard: bool
    effect: str
    diagnostic: str = ""

    @property
    def kind(self) -> str:
        """C{"hard"} or C{"soft"}: how the copy failed, whatever the policy does."""
        return "hard" if self.hard else "soft"


def effect_of(group: str, hard: bool) -> str:
    if group == "ours":
        return "refused"
    if group == "gone" and hard:
        return "hard"
    return "soft"


def _verdict(reason: str, hard: bool, diagnostic: str, texts) -> Verdict:
    group = reason_group(reason, diagnostic)
    if group != "ours" and any(is_spam_rejection(t) for t in texts if t):
        group = "ours"
    return Verdict(reason, group, hard, effect_of(group, hard), diagnostic)


def _recipient(analysis, email: Optional[str]):
    recipients = list(analysis.recipients)
    if email:
        wanted = email.lower()
        for r in recipients:
            if (r.address or "").strip("<> ").lower() == wanted:
                return r
    return recipients[0] if recipients else None


def is_delay_warning(analysis, email: Optional[str] = None) -> bool:
    """
    Whether the report only says the copy is delayed (it may still be
    delivered, and its real bounce would come later).
    """
    r = _recipient(analysis, email)
    action = (r.action or "").strip().lower() if r is not None else ""
    if action:
        return action.startswith("delay")
    return bool(analysis.delay_warning)


def from_analysis(analysis, email: Optional[str] = None) -> Verdict:
    """
    The verdict on a probable bounce (a L{BounceAnalyzer}) of a copy sent
    to C{email}: that recipient's reason, or the first one's.
    """
    r = _recipient(analysis, email)
    code, text = analysis.diagnostic_codes
    diagnostic = (r.diagnostic if r is not None else None) or text or ""
    reason = r.reason if r is not None else None
    if not reason:
        reason = classify(None, f"{code or ''} {text or ''}".strip())
    hard = r.hard if r is not None and r.hard is not None else analysis.is_hard()
    texts = [f"{code or ''} {text}" if text else ""]
    texts += [x.diagnostic for x in analysis.recipients if x.diagnostic]
    return _verdict(reason, bool(hard), diagnostic, texts)


def from_reply(code, text: str, command: str = "RCPT") -> Verdict:
    """
    The verdict on a smarthost's refusal of a copy (C{550}, C{"5.7.1 ...
    blocked using zen.spamhaus.org"}), read like a DSN's diagnostic.
    """
    text = text if isinstance(text, str) else ""
    reason = reply_reason(code, text, command)
    try:
        hard = 500 <= int(code) < 600
    except (TypeError, ValueError):
        hard = False
    return _verdict(reason, hard, f"{code} {text}".strip(), [f"{code} {text}"])
