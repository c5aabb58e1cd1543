# -*- test-case-name: tests.bounces.test_spamtext -*-
"""
Recognise SMTP rejections of our mail for what it I{is}, not for whom it was
sent to: spam, malware, a blocked sending IP, failed authentication of the
(forwarded) author, a content policy.

Kept for the callers of L{is_spam_rejection}; the answer comes from the
reason classifier, L{trackermail.bounces.reasons.is_spam_rejection}.
"""

from __future__ import annotations

from trackermail.bounces.reasons import is_spam_rejection

__all__ = ["is_spam_rejection"]
