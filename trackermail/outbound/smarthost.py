# -*- test-case-name: tests.outbound.test_smarthost -*-
"""
Whose fault is a refusal: the recipient's, the message's, or the
smarthost's?

The smarthost is not the recipient. Only a permanent reply to RCPT TO on a
session that otherwise works says something about an address, and only
that is counted as a bounce (through the bounce policy). Everything else:

  - the session could not be set up (connect, greeting, EHLO, STARTTLS,
    AUTH), MAIL FROM was refused permanently, or a relaying refusal
    (5.7.1 "Relay access denied") at MAIL or RCPT: the smarthost is
    misconfigured or refuses us. The delivery is deferred (retried with
    backoff), never counted as a bounce;
  - the same permanent RCPT reply (addresses left out) for recipients of
    L{RUN_DOMAINS} different domains in a row: the smarthost again. To see
    such a run, a permanent RCPT reply is held for up to C{hold_time}
    seconds before it counts: a later success releases the held ones as
    real failures, a different refusal or the time limit too; the run,
    once seen, turns them into deferrals;
  - a permanent refusal of the content (end of DATA, a size limit at MAIL,
    a local check): about the message, not the address. The delivery
    fails without a bounce.

While the smarthost refuses, the gauge C{trackermail_smarthost_refusing}
is 1, deferrals are counted by reason in
C{trackermail_smarthost_refusals_total}, and one line is logged when it
starts, one every C{log_interval} seconds while it lasts, and one when a
delivery succeeds again.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from twisted.logger import Logger

from trackermail import metrics
from trackermail.outbound.interface import CONNECT, MAIL, RCPT, Reply
from trackermail.store.outbox_report import error_kind

log = Logger()

# What became of a reply.
SENT = "sent"
RETRY = "retry"  # temporary: try again with backoff
DEFER = "defer"  # the smarthost's fault: try again with backoff, never a bounce
FAIL = "fail"  # permanent, about the message: no bounce
BOUNCE = "bounce"  # permanent, about the recipient: the bounce policy decides
HOLD = "hold"  # permanent at RCPT, held for a moment (see the module docstring)

RUN_DOMAINS = 3

_RELAY = re.compile(
    r"relay(ing)?\s+(access\s+)?(is\s+)?(denied|not\s+(allowed|permitted)|prohibited|refused)"
    r"|(unable|not\s+(allowed|permitted))\s+to\s+relay|we\s+do\s+not\s+relay",
    re.I)
_STATUS = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")


def status_of(text: str) -> str:
    """The enhanced status code a reply text starts with, or ""."""
    match = _STATUS.match(text or "")
    return match.group(1) if match else ""


def is_relay_refusal(reply: Reply) -> bool:
    """A permanent refusal to relay (the smarthost does not take mail from us)."""
    return reply.code >= 500 and (
        bool(_RELAY.search(reply.text))
        or (status_of(reply.text) == "5.7.1" and "relay" in reply.text.lower()))


def is_size_refusal(reply: Reply) -> bool:
    """A refusal because of the message's size (about the message, not the smarthost)."""
    return reply.code == 552 or status_of(reply.text) in ("5.3.4", "5.2.3")


def _domain(recipient: str) -> str:
    return recipient.rpartition("@")[2].lower()


class SmarthostWatch:
    """
    Judges replies (see the module docstring) and remembers whether the
    smarthost refuses.

    @param on_release: C{on_release(delivery, reply, verdict)} for a held
        reply once it is judged: L{BOUNCE} or L{DEFER}.
    """

    def __init__(self, clock: Any, on_release: Callable, peer: str = "smarthost",
                 hold_time: float = 10.0, log_interval: float = 300.0):
        self.clock = clock
        self.on_release = on_release
        self.peer = peer
        self.hold_time = hold_time
        self.log_interval = log_interval
        # Why the smarthost refuses (None: it does not, as far as we know).
        self.refusing: str | None = None
        self._since = 0.0
        self._last_log = 0.0
        self._deferred_since_log = 0
        self._last_reply: Reply | None = None
        self._held: list[tuple[Any, Reply, float]] = []
        self._run_key: tuple | None = None
        self._run_domains: set[str] = set()
        self._timer = None

    @property
    def held(self) -> int:
        return len(self._held)

    def judge(self, delivery: Any, reply: Reply) -> str:
        code, text, stage = reply
        if 200 <= code < 300:
            self._accepted()
            return SENT
        if stage == CONNECT:
            return self._smarthost("connect", reply)
        if stage in (MAIL, RCPT) and is_relay_refusal(reply):
            return self._smarthost("relay", reply)
        if code < 500 or code >= 600:
            return RETRY
        if stage == MAIL:
            if is_size_refusal(reply):
                return FAIL
            return self._smarthost("mail", reply)
        if stage == RCPT:
            key = (code, error_kind(text))
            if self.refusing == "pattern" and key == self._run_key:
                return self._smarthost("pattern", reply)
            self._hold(delivery, reply, key)
            return HOLD
        return FAIL

    def release_all(self, verdict: str) -> None:
        """Judge every held reply now (e.g. when stopping)."""
        held, self._held = self._held, []
        self._cancel_timer()
        for delivery, reply, _ in held:
            self.on_release(delivery, reply, verdict)

    def stop(self) -> None:
        self._cancel_timer()

    # -- the run of identical RCPT refusals ------------------------------------

    def _hold(self, delivery: Any, reply: Reply, key: tuple) -> None:
        if key != self._run_key:
            # A different refusal: what was held was not one run.
            self.release_all(BOUNCE)
            self._run_key = key
            self._run_domains = set()
        self._run_domains.add(_domain(delivery.recipient))
        self._held.append((delivery, reply, self.clock.seconds()))
        if len(self._run_domains) >= RUN_DOMAINS:
            self._smarthost("pattern", reply, count=len(self._held))
            self.release_all(DEFER)
        elif self.hold_time <= 0:
            self.release_all(BOUNCE)
        elif self._timer is None:
            self._timer = self.clock.callLater(self.hold_time, self._expire)

    def _expire(self) -> None:
        self._timer = None
        limit = self.clock.seconds() - self.hold_time
        expired = [h for h in self._held if h[2] <= limit]
        self._held = [h for h in self._held if h[2] > limit]
        if self._held:
            delay = max(0.0, self._held[0][2] + self.hold_time - self.clock.seconds())
            self._timer = self.clock.callLater(delay, self._expire)
        for delivery, reply, _ in expired:
            self.on_release(delivery, reply, BOUNCE)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    # -- the smarthost's state -------------------------------------------------------

    def _accepted(self) -> None:
        if self._held:
            self.release_all(BOUNCE)
        if self._run_key is not None:
            self._run_key = None
            self._run_domains = set()
        if self.refusing is not None:
            log.info("smarthost {peer} accepts mail again after {seconds:.0f} s of refusals"
                     " ({reason})", peer=self.peer, reason=self.refusing,
                     seconds=self.clock.seconds() - self._since)
            self.refusing = None
            metrics.smarthost_refusing(False)

    def _smarthost(self, reason: str, reply: Reply, count: int = 1) -> str:
        now = self.clock.seconds()
        metrics.smarthost_refusal(reason, count)
        self._last_reply = reply
        if self.refusing is None:
            self.refusing = reason
            self._since = self._last_log = now
            self._deferred_since_log = 0
            metrics.smarthost_refusing(True)
            log.warn("smarthost {peer} refuses our mail ({reason}): {code} {text}; deferring"
                     " deliveries (no bounces counted) until it accepts mail again",
                     peer=self.peer, reason=reason, code=reply.code, text=reply.text)
            return DEFER
        self.refusing = reason
        self._deferred_since_log += count
        if now - self._last_log >= self.log_interval:
            log.warn("smarthost {peer} still refuses our mail ({reason}): {count} deliveries"
                     " deferred in the last {minutes:.0f} min; last reply {code} {text}",
                     peer=self.peer, reason=reason, count=self._deferred_since_log,
                     minutes=(now - self._last_log) / 60, code=reply.code, text=reply.text)
            self._last_log = now
            self._deferred_since_log = 0
        return DEFER
