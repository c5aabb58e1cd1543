"""
Helpers for the control bot's tests: build control mails, run them through
L{handle_control} on a store, and read back what landed in the outbox.

Each test mixin runs on three backends (see L{backends}): the in-memory
store, an SQLite file driven from adbapi's thread, and PostgreSQL (skipped
when unreachable).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import sys
from dataclasses import dataclass

from twisted.trial.unittest import TestCase

from tests.support.stores import make_memory_store, make_pg_store, make_sqlite_store
from trackermail.config import config_from_dict
from trackermail.control.handler import handle_control
from trackermail.control.texts import NOTICE_SUBJECT
from trackermail.handling import Context, Incoming
from trackermail.message import parse_message
from trackermail.routing import Route
from trackermail.store.outbox import outbox_body
from trackermail.store.outbox_report import delivery_rows
from trackermail.store.packages import add_package
from trackermail.store.sql import Rows
from trackermail.store.subscriptions import subscriptions_of
from trackermail.store.teams import add_team, team_add_package

FQDN = "tracker.example.org"
CONTROL = f"control@{FQDN}"
JANE = "jane@example.org"
TOM = "tom@example.com"
NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
DAY = 86400.0
DEFAULTS = "archive, bts, bts-control, build, contact, default, summary, upload-source"


def make_config(**control):
    return config_from_dict(
        {"tracker": {"fqdn": FQDN, "dev": True}, "control": control},
        require_fqdn=False,
    )


def make_mail(body: str | bytes = "", subject: str | None = "", sender: str | None = JANE,
              headers=(), msgid: str | None = "<m1@example.org>",
              content_type: str | None = None) -> bytes:
    """A control mail as bytes (CRLF line ends)."""
    head = []
    if sender is not None:
        head.append(f"From: {sender}")
    head.append(f"To: {CONTROL}")
    if subject is not None:
        head.append(f"Subject: {subject}")
    if msgid is not None:
        head.append(f"Message-ID: {msgid}")
    if content_type is not None:
        head += ["MIME-Version: 1.0", f"Content-Type: {content_type}"]
    head += [f"{name}: {value}" for name, value in headers]
    if isinstance(body, str):
        body = body.encode("utf-8")
    body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return "\r\n".join(head).encode("utf-8") + b"\r\n\r\n" + body


def make_incoming(raw: bytes, envelope_from: str | None = None) -> Incoming:
    msg = parse_message(raw)
    return Incoming(
        raw=raw,
        msg=msg,
        route=Route("control", CONTROL),
        envelope_from=envelope_from,
        digest=hashlib.sha256(raw).hexdigest(),
        msgid=str(msg.get("Message-ID", "")),
    )


@dataclass
class Sent:
    """One mail of the outbox: its envelope recipients and senders, parsed."""

    recipients: list
    senders: list
    raw: bytes

    @property
    def msg(self):
        return email.message_from_bytes(self.raw, policy=email.policy.default)

    @property
    def subject(self) -> str:
        return str(self.msg["Subject"])

    @property
    def text(self) -> str:
        return self.msg.get_content()

    @property
    def lines(self) -> list[str]:
        """The body's lines before the signature, trailing blank lines removed."""
        lines = self.text.splitlines()
        if "-- " in lines:
            lines = lines[: lines.index("-- ")]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    @property
    def key(self) -> str:
        """The key of a CONFIRM mail."""
        word, key = self.subject.split()
        assert word == "CONFIRM", self.subject
        return key


def _message_ids(after):
    rows = yield Rows("SELECT id FROM outbox_messages WHERE id > ? ORDER BY id", (after,))
    return [r[0] for r in rows]


class ControlMixin:
    """
    Runs control mails against a fresh store with a few packages and teams:
    source C{foo} (binaries C{libfoo1}, C{foo-doc}), source C{bar},
    pseudo package C{general}, public team C{perl} (owner tom, package
    foo) and private team C{secret} (owner tom, package bar).
    """

    async def setUp(self):
        self.store = await self.make_store()
        self.config = make_config()
        self._last_id = 0
        self.sent: list[Sent] = []
        self.notices: dict = {}
        await self.store.run(add_package, "foo", "source", ("libfoo1", "foo-doc"))
        await self.store.run(add_package, "bar", "source")
        await self.store.run(add_package, "general", "pseudo")
        await self.store.run(add_team, "perl", "Perl Group", TOM, True)
        await self.store.run(team_add_package, "perl", "foo")
        await self.store.run(add_team, "secret", "Secret Team", TOM, False)
        await self.store.run(team_add_package, "secret", "bar")

    async def run_mail(self, raw: bytes, now: float = NOW, config=None,
                       envelope_from: str | None = None):
        """Run one raw mail through the handler; fires with its Outcome."""
        ctx = Context(config or self.config, None, now)
        return await self.store.run(handle_control, make_incoming(raw, envelope_from), ctx)

    async def control(self, body: str = "", subject: str = "", **kwargs):
        """
        Send a control mail; fires with C{(outcome, reply, confirmations)}:
        the reply L{Sent} (None when there is none) and the CONFIRM mails by
        recipient. The notice mails, by recipient, are left in
        C{self.notices}; every mail queued is added to C{self.sent}.
        """
        mail_kwargs = {k: kwargs.pop(k) for k in
                       ("sender", "headers", "msgid", "content_type") if k in kwargs}
        outcome = await self.run_mail(make_mail(body, subject, **mail_kwargs), **kwargs)
        sent = await self.outbox()
        self.sent.extend(sent)
        replies = [s for s in sent if s.subject.startswith("Re: ")]
        self.assertLessEqual(len(replies), 1)
        confirmations = {}
        self.notices = {}
        for s in sent:
            self.assertEqual(len(s.recipients), 1)
            if s.subject.startswith("CONFIRM "):
                found = confirmations
            elif s.subject == NOTICE_SUBJECT:
                found = self.notices
            else:
                continue
            self.assertNotIn(s.recipients[0], found)
            found[s.recipients[0]] = s
        return outcome, (replies[0] if replies else None), confirmations

    def mails_to(self, email: str) -> list[Sent]:
        """Every mail queued for C{email} by this test's control mails so far."""
        return [s for s in self.sent if email in s.recipients]

    async def reply_lines(self, body: str = "", subject: str = "", **kwargs):
        """The reply's lines to a control mail (which must get a reply)."""
        _, reply, _ = await self.control(body, subject, **kwargs)
        self.assertIsNotNone(reply)
        return reply.lines

    async def outbox(self) -> list[Sent]:
        """The mails queued since the last call, oldest first."""
        result = []
        for mid in await self.store.run(_message_ids, self._last_id):
            self._last_id = mid
            rows = await self.store.run(delivery_rows, mid)
            body = await self.store.run(outbox_body, mid)
            result.append(Sent([r[0] for r in rows], [r[1] for r in rows], body))
        return result

    async def subscribed(self, email=JANE):
        return await self.store.run(subscriptions_of, email)

    async def subscribe_confirmed(self, package, email=JANE, now=NOW):
        """Subscribe through the bot: request, then confirm by key."""
        _, _, confirmations = await self.control(f"subscribe {package} {email}", now=now)
        await self.control(f"confirm {confirmations[email].key}", now=now)


class MemoryBackend:
    async def make_store(self):
        return make_memory_store(self)


class SQLiteFileBackend:
    async def make_store(self):
        return await make_sqlite_store(self)


class PostgresBackend:
    async def make_store(self):
        return await make_pg_store(self)


def backends(mixin, name: str):
    """
    Three TestCases running C{mixin}'s tests: C{NameTests} (memory),
    C{NameSQLiteFileTests} and C{NamePostgresTests}.
    """
    module = sys._getframe(1).f_globals["__name__"]
    classes = []
    for suffix, backend in (("", MemoryBackend), ("SQLiteFile", SQLiteFileBackend),
                            ("Postgres", PostgresBackend)):
        cls = type(f"{name}{suffix}Tests", (backend, mixin, TestCase),
                   {"__module__": module})
        classes.append(cls)
    return classes
