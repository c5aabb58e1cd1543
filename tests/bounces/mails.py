"""
Bounces as MTAs write them, for the bounce policy tests.
"""

from __future__ import annotations


def dsn(rcpt: str, status: str = "5.1.1", text: str = "User unknown", *,
        action: str = "failed", code: str | None = None, original_id: str | None = None,
        reporter: str = "mx.example.net") -> bytes:
    """
    A Postfix-like DSN for C{rcpt}: C{status} and C{code} C{text} as the
    remote server's reply; with C{original_id}, the returned message's
    headers (with that Message-ID) follow.
    """
    code = code or ("550" if status.startswith("5") else "452")
    original = ""
    if original_id:
        original = (
            "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"From: Reporter <rep@example.net>\r\nTo: {rcpt}\r\n"
            f"Subject: Bug#1: dpkg: broken\r\nMessage-ID: {original_id}\r\n\r\n"
        )
    return (
        f"From: MAILER-DAEMON@{reporter} (Mail Delivery System)\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; {reporter}\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: {action}\r\nStatus: {status}\r\n"
        "Remote-MTA: dns; mail.example.net\r\n"
        f"Diagnostic-Code: smtp; {code} {status} {text}\r\n"
        f"\r\n{original}--B--\r\n"
    ).encode()


# One reply per reason group, as receiving servers word them.
BLOCKED = ("5.7.1", "Service unavailable; Client host [192.0.2.1] blocked using "
           "zen.spamhaus.org")
USER_UNKNOWN = ("5.1.1", "<dead@example.net>: Recipient address rejected: User unknown")
MAILBOX_FULL = ("5.2.2", "Mailbox full: quota exceeded")
