"""
The consent rule and the unsubscribe token through a whole tracker: mail in
over a real loopback LMTP port, out through the outbox to an SMTP sink, as a
subscriber and a stranger see it.
"""

import email
import email.policy
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.support.net import poll
from tests.support.tracker import start_tracker
from tests.test_service import lmtp_send
from trackermail.store.packages import add_package
from trackermail.store.subscriptions import dump_subscribers, subscribers_of

FQDN = "tracker.example.org"
CONTROL = f"control@{FQDN}"
JANE = "jane@example.net"
STRANGER = "stranger@example.com"


class ControlOverLMTPTests(TestCase):
    timeout = 120

    async def setUp(self):
        tracker = await start_tracker(self, sink=True, spool={"rescan_interval": 5})
        self.store, self.sink = tracker.store, tracker.sink
        self.port = tracker.ports["lmtp"]
        await self.store.run(add_package, "dpkg")
        self.count = 0

    def mails_to(self, rcpt):
        return [email.message_from_bytes(m.data, policy=email.policy.default)
                for m in self.sink.messages if rcpt in m.recipients]

    async def send(self, sender, rcpt, subject, body="", headers=""):
        self.count += 1
        data = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n{headers}"
                f"Message-ID: <e2e{self.count}@example.net>\r\n\r\n{body}\r\n").encode()
        await deferToThread(lmtp_send, self.port, sender, rcpt, data)

    async def mail_after(self, rcpt, seen, what):
        """The first mail for C{rcpt} after the C{seen} it had, once the sink gets it."""
        await poll(lambda: len(self.mails_to(rcpt)) > seen, 30, what)
        return self.mails_to(rcpt)[seen]

    async def test_subscribe_then_leave_by_the_mailto_link(self):
        """
        A stranger's request for jane changes nothing; jane's own subscribe
        works once she confirms; the List-Unsubscribe mailto of the next
        copy, sent back, unsubscribes her at once and says so.
        """
        await self.send(STRANGER, CONTROL, f"subscribe dpkg {JANE}")
        stranger_reply = await self.mail_after(STRANGER, 0, "the stranger's reply")
        self.assertIn(f"Needs confirmation: a mail with a key was sent to {JANE}.",
                      stranger_reply.get_content())
        confirm = await self.mail_after(JANE, 0, "the CONFIRM mail")
        self.assertTrue(confirm["Subject"].startswith("CONFIRM "))
        self.assertIn(f"{STRANGER} asked", confirm.get_content())
        self.assertEqual(await self.store.run(subscribers_of, "dpkg"), [])

        await self.send(JANE, CONTROL, "Re: " + confirm["Subject"])
        reply = await self.mail_after(JANE, 1, "the confirmation's reply")
        self.assertIn(f"{JANE} is now subscribed to dpkg.", reply.get_content())
        self.assertEqual(await self.store.run(dump_subscribers), {"dpkg": [JANE]})

        await self.send("owner@bugs.example.org", f"dispatch@{FQDN}", "Bug#1: dpkg broken",
                        "broken", "X-Distro-Tracker-Package: dpkg\r\n"
                        "X-Distro-Tracker-Keyword: bts\r\n")
        copy = await self.mail_after(JANE, 2, "the forwarded bug mail")
        mailto = urlsplit(copy["List-Unsubscribe"].strip("<>"))
        self.assertEqual((mailto.scheme, unquote(mailto.path)), ("mailto", CONTROL))
        subject = parse_qs(mailto.query)["subject"][0]

        await self.send(JANE, CONTROL, subject)
        reply = await self.mail_after(JANE, 3, "the reply to the mailto link")
        self.assertEqual(reply["Subject"], "Re: " + subject)
        self.assertIn(f"Unsubscribe link used: {JANE} is no longer subscribed to dpkg.",
                      reply.get_content())
        self.assertEqual(await self.store.run(dump_subscribers), {})
        self.assertEqual(len(self.mails_to(JANE)), 4)
