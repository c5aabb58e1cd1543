# -*- test-case-name: tests.test_mail -*-
"""
Building the mails the tracker writes itself (control replies,
confirmations, bounce notices) and reading headers of mails it receives
without ever raising on bad input.
"""

from __future__ import annotations

import email.utils
import secrets
import time
from email.message import EmailMessage
from email.policy import SMTP


def _clean(value: str) -> str:
    # Header values we write come partly from mail we received: never let a
    # CR or LF through (header injection).
    return " ".join(str(value).replace("\r", " ").replace("\n", " ").split())


def make_message_id(fqdn: str) -> str:
    return f"<{int(time.time())}.{secrets.token_hex(8)}@{fqdn}>"


def build_mail(
    *,
    fqdn: str,
    from_: str,
    to: str | list[str],
    subject: str,
    body: str,
    cc: list[str] = (),
    headers: list[tuple[str, str]] = (),
    now: float | None = None,
) -> bytes:
    """
    A text/plain UTF-8 mail as CRLF bytes, ready for the outbox.
    """
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _clean(from_)
    msg["To"] = ", ".join(_clean(t) for t in ([to] if isinstance(to, str) else to))
    if cc:
        msg["Cc"] = ", ".join(_clean(c) for c in cc)
    msg["Subject"] = _clean(subject)
    msg["Date"] = email.utils.formatdate(now if now is not None else time.time())
    msg["Message-ID"] = make_message_id(fqdn)
    msg["MIME-Version"] = "1.0"
    for name, value in headers:
        msg[name] = _clean(value)
    msg.set_content(body, charset="utf-8", cte="8bit" if not body.isascii() else "7bit")
    return msg.as_bytes(policy=SMTP)


def header(msg, name: str, default: str = "") -> str:
    """
    A header's decoded value, or C{default} when absent or undecodable.
    Never raises: malformed headers are normal input.
    """
    try:
        value = msg.get(name)
    except Exception:
        try:
            raw = msg._headers  # parsed but undecodable: fall back to raw text
            for k, v in raw:
                if k.lower() == name.lower():
                    return str(v)
        except Exception:
            pass
        return default
    if value is None:
        return default
    try:
        return str(value)
    except Exception:
        return default


def headers_all(msg, name: str) -> list[str]:
    try:
        values = msg.get_all(name) or []
    except Exception:
        return []
    out = []
    for v in values:
        try:
            out.append(str(v))
        except Exception:
            continue
    return out


def address_of(value: str) -> str:
    """The bare address of a From:-style value, or '' when there is none."""
    try:
        _, addr = email.utils.parseaddr(value)
    except Exception:
        return ""
    return addr if "@" in addr else ""
