# -*- test-case-name: tests.bounces.test_analyzer -*-
"""
Why a recipient failed.
"""

from __future__ import annotations

import re
from typing import Optional

from trackermail.bounces.codes import reply_code, status_parts

_SOFT_TEXT = re.compile(
    r"mailbox (is )?full|mailbox.{0,20}(over|exceed)|quota|insufficient (disk )?space|"
    r"try (again )?later|temporar|greylist|grey-list|graylist|deferred|delayed|"
    r"will be retried|still being retried|will continue|not yet been delivered|"
    r"warning message only|do not need to resend|no need to resend|too many connections|"
    r"rate limit|connection (timed out|refused)|timed? ?out",
    re.I,
)
_HARD_TEXT = re.compile(
    r"user unknown|unknown user|no such (user|mailbox|recipient|address|domain|person)|"
    r"does not exist|doesn'?t exist|not exist|unknown (recipient|address|local|mailbox)|"
    r"recipient (address )?(unknown|rejected|not found)|address rejected|invalid (recipient|address|mailbox|user)|"
    r"not (a )?(valid|known)|mailbox (unavailable|not found|disabled)|account (has been )?(disabled|suspended|closed)|"
    r"host (not found|unknown)|domain (not found|unknown)|unrouteable|unroutable|no mailbox|"
    r"permanent|gave up|given up|not listed|addressee unknown|not our customer|"
    r"name is not recognized|user not found|unknown or illegal",
    re.I,
)

def judge_hard(action: Optional[str], status: Optional[str], diagnostic: str,
                default: Optional[bool]) -> Optional[bool]:
    if action and action.lower().startswith("delay"):
        return False
    parts = status_parts(status)
    if parts and parts[0] in ("4", "5"):
        return parts[0] == "5"
    code = reply_code(diagnostic)
    if code:
        return code[0] == "5"
    if action and re.match(r"(failed|failure|expired|abort)", action.lower()):
        # The message came back for good: Lamson and RFC 3464 read that as
        # permanent, whatever the cause ("mailbox full" included).
        return True
    if diagnostic:
        if _SOFT_TEXT.search(diagnostic):
            return False
        if _HARD_TEXT.search(diagnostic):
            return True
    return default
