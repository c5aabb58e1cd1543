# -*- test-case-name: tests.bounces.test_codes -*-
"""
Status codes of delivery reports: the RFC 3463 enhanced status codes
(C{5.1.1}) with their texts, the SMTP reply codes (C{550}), and how to find
either in a diagnostic text.
"""

from __future__ import annotations

import re
from typing import Optional

# RFC 3463 (and RFC 3886, 4468, 7372 for the later detail codes).
PRIMARY_STATUS_CODES = {
    "1": "Unknown Status Code 1",
    "2": "Success",
    "3": "Unknown Status Code 3",
    "4": "Persistent Transient Failure",
    "5": "Permanent Failure",
}

SECONDARY_STATUS_CODES = {
    "0": "Other or Undefined Status",
    "1": "Addressing Status",
    "2": "Mailbox Status",
    "3": "Mail System Status",
    "4": "Network and Routing Status",
    "5": "Mail Delivery Protocol Status",
    "6": "Message Content or Media Status",
    "7": "Security or Policy Status",
}

COMBINED_STATUS_CODES = {
    "00": "Not Applicable",
    "10": "Other address status",
    "11": "Bad destination mailbox address",
    "12": "Bad destination system address",
    "13": "Bad destination mailbox address syntax",
    "14": "Destination mailbox address ambiguous",
    "15": "Destination mailbox address valid",
    "16": "Mailbox has moved",
    "17": "Bad sender's mailbox address syntax",
    "18": "Bad sender's system address",
    "110": "Recipient address has null MX",
    "20": "Other or undefined mailbox status",
    "21": "Mailbox disabled, not accepting messages",
    "22": "Mailbox full",
    "23": "Message length exceeds administrative limit",
    "24": "Mailing list expansion problem",
    "30": "Other or undefined mail system status",
    "31": "Mail system full",
    "32": "System not accepting network messages",
    "33": "System not capable of selected features",
    "34": "Message too big for system",
    "35": "System incorrectly configured",
    "36": "Requested priority was changed",
    "40": "Other or undefined network or routing status",
    "41": "No answer from host",
    "42": "Bad connection",
    "43": "Routing server failure",
    "44": "Unable to route",
    "45": "Network congestion",
    "46": "Routing loop detected",
    "47": "Delivery time expired",
    "50": "Other or undefined protocol status",
    "51": "Invalid command",
    "52": "Syntax error",
    "53": "Too many recipients",
    "54": "Invalid command arguments",
    "55": "Wrong protocol version",
    "56": "Authentication Exchange line is too long",
    "60": "Other or undefined media error",
    "61": "Media not supported",
    "62": "Conversion required and prohibited",
    "63": "Conversion required but not supported",
    "64": "Conversion with loss performed",
    "65": "Conversion failed",
    "66": "Message content not available",
    "67": "Non-ASCII addresses not permitted for that sender/recipient",
    "68": "UTF-8 string reply is required, but not permitted by the SMTP client",
    "69": "UTF-8 header message cannot be transferred to one or more recipients",
    "70": "Other or undefined security status",
    "71": "Delivery not authorized, message refused",
    "72": "Mailing list expansion prohibited",
    "73": "Security conversion required but not possible",
    "74": "Security features not supported",
    "75": "Cryptographic failure",
    "76": "Cryptographic algorithm not supported",
    "77": "Message integrity failure",
    "78": "Authentication credentials invalid",
    "79": "Authentication mechanism is too weak",
    "710": "Encryption Needed",
    "711": "Encryption required for requested authentication mechanism",
    "712": "A password transition is needed",
    "713": "User Account Disabled",
    "714": "Trust relationship required",
    "715": "Priority Level is too low",
    "716": "Message is too big for the specified priority",
    "717": "Mailbox owner has changed",
    "718": "Domain owner has changed",
    "719": "RRVS test cannot be completed",
    "720": "No passing DKIM signature found",
    "721": "No acceptable DKIM signature found",
    "722": "No valid author-matched DKIM signature found",
    "723": "SPF validation failed",
    "724": "SPF validation error",
    "725": "Reverse DNS validation failed",
    "726": "Multiple authentication checks failed",
    "727": "Sender address has null MX",
}


# The bounce reason an enhanced status code stands for, when it stands for
# one (see L{trackermail.bounces.reasons}).  "x.y.z" entries hold for both
# classes; "5.y.z" and "4.y.z" ones for that class only.  Codes that say
# little ("5.0.0", "5.4.4", "5.5.0") are left out: the text decides.
STATUS_REASONS = {
    "x.1.6": "hasmoved",
    "x.1.7": "rejected",
    "x.1.8": "rejected",
    "x.1.9": "systemerror",
    "5.1.0": "userunknown",
    "5.1.1": "userunknown",
    "5.1.2": "hostunknown",
    "5.1.3": "userunknown",
    "5.1.4": "filtered",
    "5.1.10": "userunknown",  # Microsoft: RESOLVER.ADR.RecipientNotFound
    "5.2.0": "filtered",
    "4.2.1": "suspend",
    "5.2.1": "filtered",
    "x.2.2": "mailboxfull",
    "x.2.3": "exceedlimit",
    "x.2.4": "filtered",
    "5.3.0": "systemerror",
    "x.3.1": "systemfull",
    "x.3.2": "notaccept",
    "x.3.3": "systemerror",
    "5.3.4": "mesgtoobig",
    "x.3.5": "systemerror",
    "5.4.0": "networkerror",
    "4.4.1": "expired",
    "x.4.2": "networkerror",
    "5.4.3": "systemerror",
    "4.4.4": "networkerror",
    "4.4.5": "toomanyconn",
    "x.4.6": "networkerror",
    "x.4.7": "expired",
    "4.5.3": "systemerror",
    "5.5.3": "toomanyconn",
    "5.5.4": "systemerror",
    "x.5.5": "systemerror",
    "5.5.6": "securityerror",
    "x.6.0": "contenterror",
    "5.6.1": "contenterror",
    "x.6.2": "contenterror",
    "5.6.3": "contenterror",
    "x.6.5": "contenterror",
    "5.6.6": "contenterror",
    "5.6.7": "contenterror",
    "5.6.8": "contenterror",
    "5.6.9": "contenterror",
    "5.7.0": "securityerror",
    "x.7.1": "blocked",
    "x.7.2": "blocked",
    "5.7.3": "securityerror",
    "5.7.4": "securityerror",
    "x.7.5": "securityerror",
    "x.7.6": "securityerror",
    "x.7.7": "securityerror",
    "5.7.8": "securityerror",
    "5.7.9": "securityerror",
    "5.7.10": "securityerror",
    "5.7.11": "securityerror",
    "x.7.12": "securityerror",
    "5.7.13": "suspend",
    "5.7.14": "securityerror",
    "x.7.15": "securityerror",
    "x.7.16": "mesgtoobig",
    "5.7.17": "hasmoved",
    "5.7.18": "hasmoved",
    "5.7.19": "securityerror",
    "5.7.20": "authfailure",
    "5.7.21": "authfailure",
    "5.7.22": "authfailure",
    "5.7.23": "authfailure",
    "x.7.24": "authfailure",
    "5.7.25": "requireptr",
    "5.7.26": "authfailure",
    "5.7.27": "rejected",
}


# Microsoft's own three-digit details (Exchange Online, Outlook.com), as
# documented in its non-delivery report reference.
_MICROSOFT_REASONS = [
    (re.compile(r"x\.4\.316$"), "expired"),
    (re.compile(r"x\.4\.312$"), "networkerror"),
    (re.compile(r"5\.6\.11$"), "contenterror"),
    (re.compile(r"5\.7\.12[34]$|5\.7\.13[3-6]$|5\.7\.511$"), "rejected"),
    (re.compile(r"5\.7\.50[1-3]$"), "spamdetected"),
    (re.compile(r"5\.7\.50[45]$"), "filtered"),
    (re.compile(r"5\.7\.50[67]$|5\.7\.60[6-9]$|5\.7\.6[1-4]\d$|4\.7\.[56]\d\d$|4\.7\.8[5-9]\d$"),
     "blocked"),
    (re.compile(r"5\.7\.508$|5\.7\.7[0-4]\d$"), "toomanyconn"),
    (re.compile(r"5\.7\.509$"), "authfailure"),
    (re.compile(r"5\.7\.510$"), "notaccept"),
    (re.compile(r"5\.7\.51[2-5]$"), "securityerror"),
    (re.compile(r"5\.1\.351$"), "userunknown"),
]


def status_reason(status: Optional[str]) -> Optional[str]:
    """
    The bounce reason the enhanced status code C{status} (C{"5.2.2"})
    stands for, or None.
    """
    parts = status_parts(status)
    if not parts or parts[0] not in ("4", "5"):
        return None
    detail = ".".join(str(int(p)) for p in parts[1:])
    reason = STATUS_REASONS.get(parts[0] + "." + detail) or STATUS_REASONS.get("x." + detail)
    if reason is None and len(parts[2]) == 3:
        code = parts[0] + "." + detail
        for regex, named in _MICROSOFT_REASONS:
            if regex.match(code) or regex.match("x." + detail):
                return named
    return reason


_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
_REPLY = re.compile(r"(?<![\d.#-])([245]\d\d)(?:[ -]|$)(?!\s*(?:bytes|ms|seconds|minutes|hours|days))")


def enhanced_status(text: str) -> Optional[str]:
    if not text:
        return None
    m = _ENHANCED.search(text)
    if m:
        return "%s.%s.%s" % m.groups()
    return None


def failure_status(text: str) -> Optional[str]:
    """
    The first enhanced status code of a failure (C{4.x.x}, C{5.x.x}) in
    C{text}: a session transcript quotes successes too.
    """
    if not text:
        return None
    for m in _ENHANCED.finditer(text):
        if m.group(1) != "2":
            return "%s.%s.%s" % m.groups()
    return None


def reply_code(text: str) -> Optional[str]:
    if not text:
        return None
    for m in _REPLY.finditer(text):
        code = m.group(1)
        if code[0] in "45":
            return code
    return None


def status_parts(status: Optional[str]):
    if not status:
        return None
    m = re.match(r"\s*([0-9]+)\.([0-9]+)\.([0-9]+)", status)
    if not m:
        return None
    return m.groups()
