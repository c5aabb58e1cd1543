# -*- test-case-name: tests.bounces.test_reasons -*-
"""
Error names and codes of particular MTAs and mail providers, which say
exactly why a recipient failed, whatever the words around them:

  - Microsoft Exchange's named errors (C{RESOLVER.ADR.RecipNotFound});
  - Gmail's C{(state N)} trailer: the point of the SMTP session a relayed
    message failed at;
  - the codes Orange and La Poste (C{OFR_506}, C{LPN007_416}), Cox
    (C{AUP#CXBL}) and Spectrum (C{AUP#I-1310}) document for their refusals.

L{provider_reason} is asked before the general rules of
L{trackermail.bounces.reasons}.
"""

from __future__ import annotations

import re
from typing import Optional

from trackermail.bounces.codes import status_parts, status_reason

_EXCHANGE_ERRORS = {
    "resolver.adr.recipnotfound": "userunknown",
    "resolver.adr.exrecipnotfound": "userunknown",
    "resolver.adr.recipientnotfound": "userunknown",
    "resolver.adr.reciplimit": "toomanyconn",
    "resolver.adr.invalidinsmtp": "systemerror",
    "resolver.adr.ambiguous": "systemerror",
    "resolver.adr.badprimary": "systemerror",
    "resolver.rst.authrequired": "securityerror",
    "resolver.rst.notauthorized": "rejected",
    "resolver.rst.recipsizelimit": "mesgtoobig",
    "queue.expired": "expired",
    "smtpsend.dns.nonexistentdomain": "hostunknown",
    "smtpsend.dns.mxloopback": "networkerror",
}
_EXCHANGE_RE = re.compile(r"\b(%s)\b" % "|".join(re.escape(k) for k in _EXCHANGE_ERRORS))

# The state a Gmail relay failed in: 6 MAIL FROM, 8-12 AUTH, 13 EHLO,
# 14 RCPT TO, 15-18 DATA.
_GMAIL_STATES = {
    "6": "systemerror", "8": "systemerror", "9": "systemerror", "12": "norelaying",
    "13": "blocked", "14": "userunknown", "15": "filtered", "17": "filtered", "18": "filtered",
}
_GMAIL_STATE_RE = re.compile(r"\(state (\d{1,2})\)")

# Orange (OFR) and La Poste (LPN): the last three digits name the error.
_ORANGE_CODES = {
    "101": "blocked", "102": "blocked", "103": "blocked", "104": "toomanyconn",
    "305": "securityerror", "401": "authfailure", "402": "securityerror",
    "403": "rejected", "405": "rejected", "415": "rejected", "416": "userunknown",
    "417": "mailboxfull", "420": "suspend", "421": "rejected", "426": "suspend",
    "505": "systemerror", "506": "spamdetected", "510": "blocked", "514": "mesgtoobig",
    "517": "authfailure", "630": "policyviolation", "999": "blocked",
}
_ORANGE_RE = re.compile(r"\b(?:lpnaaa|lpn|ofr|ouk)(?:_\d{3}|\d{3}[-_]\d{3})\b")

# Cox: a named code after "AUP#".
_COX_CODES = {
    "cxbl": "blocked", "cdrbl": "blocked", "cxdns": "requireptr", "cxsndr": "authfailure",
    "cxsmtp": "rejected", "cxcnct": "toomanyconn", "cxmxrt": "toomanyconn",
    "cxthrt": "securityerror", "cxmj": "securityerror",
}
_COX_RE = re.compile(r"aup#((?:ipbl|urlbl)\d+|[a-z]+)\b")

# Spectrum: a four-digit code after "AUP#I" or "AUP#O", in documented ranges.
_SPECTRUM_RANGES = [
    (1000, 1000, "blocked"), (1010, 1080, "rejected"), (1090, 1090, "systemerror"),
    (1100, 1150, "requireptr"), (1160, 1190, "policyviolation"), (1200, 1250, "blocked"),
    (1260, 1260, "networkerror"), (1300, 1340, "toomanyconn"), (1350, 1490, "speeding"),
    (1500, 1520, "rejected"), (1530, 1530, "mesgtoobig"), (1540, 1550, "speeding"),
    (1560, 1560, "policyviolation"), (1580, 1580, "speeding"),
]
_SPECTRUM_RE = re.compile(r"aup#[a-z-]*(\d{4})\b")


def provider_reason(text: str, status: Optional[str] = None) -> Optional[str]:
    """
    The reason an error name or provider code in C{text} (lower case)
    gives, or None.  C{status} is the recipient's status code: in Gmail's
    reports a precise one says more than the state.
    """
    m = _EXCHANGE_RE.search(text)
    if m:
        return _EXCHANGE_ERRORS[m.group(1)]
    m = _GMAIL_STATE_RE.search(text)
    if m and m.group(1) in _GMAIL_STATES:
        parts = status_parts(status)
        if parts and "0" not in parts[1:]:
            return status_reason(status) or _GMAIL_STATES[m.group(1)]
        return _GMAIL_STATES[m.group(1)]
    if "aup#" in text:
        m = _COX_RE.search(text)
        if m:
            code = m.group(1)
            if code in _COX_CODES:
                return _COX_CODES[code]
            if code.startswith("ipbl"):
                return "blocked"
            if code.startswith("urlbl"):
                return "spamdetected"
        m = _SPECTRUM_RE.search(text)
        if m:
            number = int(m.group(1))
            for low, high, reason in _SPECTRUM_RANGES:
                if low <= number <= high:
                    return reason
    m = _ORANGE_RE.search(text)
    if m:
        return _ORANGE_CODES.get(m.group(0)[-3:])
    return None
