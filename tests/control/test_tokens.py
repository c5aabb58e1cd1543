"""
Leaving always works: the unsubscribe token of a forwarded copy's
List-Unsubscribe, sent to control@, unsubscribes at once, whatever the
budgets say; and a token does nothing else.
"""

from urllib.parse import parse_qs, unquote, urlsplit

from twisted.trial.unittest import SynchronousTestCase

from tests.control import JANE, TOM, ControlMixin, backends
from tests.support.pipeline import FQDN, deliver, make_config, make_pipeline, outbox, parse
from trackermail.dispatch import forward_headers, header_prefix, plan_deliveries
from trackermail.handling import Context
from trackermail.signing import subscription_token
from trackermail.store.subscriptions import (
    Binding,
    subscribe,
    subscriptions_of,
    unsubscribe,
    unsubscribe_token,
)

BUG_MAIL = (b"From: rep@example.net\r\nSubject: Bug#1: dpkg broken\r\n"
            b"Message-ID: <bug1@bugs.example.org>\r\n"
            b"X-Distro-Tracker-Package: dpkg\r\nX-Distro-Tracker-Keyword: bts\r\n"
            b"\r\nbroken\r\n")


def mailto_of(copy) -> tuple[str, str]:
    """(address, subject) of the mailto: in a copy's List-Unsubscribe."""
    [mailto] = [part.strip(" <>") for part in copy["List-Unsubscribe"].split(",")
                if part.strip(" <>").startswith("mailto:")]
    parts = urlsplit(mailto)
    return unquote(parts.path), parse_qs(parts.query)["subject"][0]


class RoundTripTests(SynchronousTestCase):
    """Through the processor: a forwarded copy's mailto, sent back, ends the subscription."""

    def setUp(self):
        self.processor, self.store, _ = make_pipeline(self)
        self.run = lambda program, *a: self.successResultOf(self.store.run(program, *a))
        self.run(subscribe, "alice@example.org", "dpkg")
        self.run(subscribe, "alice@example.org", "apt")
        self.seen = 0

    def new_mail(self):
        copies = outbox(self, self.store)
        fresh, self.seen = copies[self.seen:], len(copies)
        return fresh

    def send(self, to, subject, sender="alice@example.org", msgid="<u1@example.org>"):
        raw = (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
               f"Message-ID: {msgid}\r\n\r\n").encode()
        return deliver(self, self.processor, to, raw)

    def test_mailto_round_trip(self):
        """The mailto of a copy unsubscribes at once, says so, and asks nobody anything."""
        deliver(self, self.processor, f"dispatch@{FQDN}", BUG_MAIL)
        [(rcpt, _, data)] = self.new_mail()
        to, subject = mailto_of(parse(data))
        self.assertEqual(to, f"control@{FQDN}")
        self.assertRegex(subject, r"\Aunsubscribe dpkg [0-9]+\.[A-Za-z0-9_-]{22}\Z")
        outcome = self.send(to, subject)
        self.assertEqual(outcome.action, "replied")
        [(rcpt, _, data)] = self.new_mail()
        self.assertEqual(rcpt, "alice@example.org")
        reply = parse(data).get_content().splitlines()
        self.assertEqual(reply[:2], [f"> {subject}", "Unsubscribe link used: alice@example.org"
                                     " is no longer subscribed to dpkg."])
        self.assertEqual(self.run(subscriptions_of, "alice@example.org"), ["apt"])

    def test_mailto_after_resubscribing_does_nothing(self):
        """The mailto of a copy of an ended subscription does nothing, even after a new subscribe."""
        deliver(self, self.processor, f"dispatch@{FQDN}", BUG_MAIL)
        [(_, _, data)] = self.new_mail()
        to, subject = mailto_of(parse(data))
        self.run(unsubscribe, "alice@example.org", "dpkg")
        self.run(subscribe, "alice@example.org", "dpkg")
        self.send(to, subject)
        [(_, _, data)] = self.new_mail()
        self.assertIn("Error: this unsubscribe link is not valid for a current subscription"
                      " to dpkg", parse(data).get_content())
        self.assertEqual(self.run(subscriptions_of, "alice@example.org"), ["apt", "dpkg"])

    def test_each_copy_its_own_token(self):
        """Two subscribers' copies carry different tokens; each ends its own subscription."""
        self.run(subscribe, "bob@example.org", "dpkg")
        deliver(self, self.processor, f"dispatch@{FQDN}", BUG_MAIL)
        copies = {rcpt: mailto_of(parse(data))[1] for rcpt, _, data in self.new_mail()}
        self.assertNotEqual(copies["alice@example.org"], copies["bob@example.org"])
        self.send(f"control@{FQDN}", copies["bob@example.org"], sender="alice@example.org")
        self.assertEqual(self.run(subscriptions_of, "bob@example.org"), [])
        self.assertEqual(self.run(subscriptions_of, "alice@example.org"), ["apt", "dpkg"])


class ListUnsubscribeTests(SynchronousTestCase):
    """The List-Unsubscribe lines of planned copies, whatever the URL and line ends."""

    def test_same_as_forward_headers(self):
        """Each copy's prefix is forward_headers with its token, rendered in the mail's line ends."""
        binding = Binding(12, "jane@example.org", "salt")
        for public in ("", "https://tracker.example.org/", "https://trackér.example.org",
                       "https://tracker.example.org/" + "x" * 990):
            config = make_config(http={"public_url": public})
            ctx = Context(config, None, 1_795_000_000.0)
            token = subscription_token(config.tracker.secret_key, 12, "g++", binding.email_lower,
                                       "salt")
            url = f"{public.rstrip('/')}/unsubscribe/{token}" if public else None
            for raw in (b"Subject: x\r\n\r\nx\r\n", b"Subject: x\n\nx\n"):
                [(_, _, prefix)] = plan_deliveries(
                    ctx, raw, None, [("jane@example.org", 3, None, binding)], "g++", "bts")
                expected = header_prefix(raw, forward_headers(
                    FQDN, "g++", "bts", unsubscribe_url=url, unsubscribe_token=token))
                self.assertEqual(prefix, expected, (public, raw))


class TokenMixin(ControlMixin):
    async def token(self, email=JANE, package="foo"):
        return await self.store.run(unsubscribe_token, self.config.tracker.secret_key,
                                    email, package)

    async def test_no_budget_blocks_a_token(self):
        """With every reply and CONFIRM mail of the day spent, the token still unsubscribes."""
        await self.store.run(subscribe, JANE, "foo")
        token = await self.token()
        for i in range(3):
            await self.control(f"subscribe dummy{i} {JANE}", sender=f"s{i}@example.net")
        for i in range(5):
            await self.control("help", msgid=f"<h{i}@x>")
        outcome, _, _ = await self.control("which", msgid="<w@x>")
        self.assertEqual(outcome.action, "dropped")
        outcome, reply, confirmations = await self.control("", subject=f"unsubscribe foo {token}")
        self.assertEqual(outcome.action, "replied")
        self.assertEqual(reply.lines, [f"> unsubscribe foo {token}", "Unsubscribe link used:"
                                       f" {JANE} is no longer subscribed to foo."])
        self.assertEqual(confirmations, {})
        self.assertEqual(await self.subscribed(), [])

    async def test_token_is_for_one_package(self):
        """A token named with another package, or of an ended subscription, does nothing."""
        await self.store.run(subscribe, JANE, "foo")
        await self.store.run(subscribe, JANE, "bar")
        token = await self.token()
        lines = await self.reply_lines(f"unsubscribe bar {token}")
        self.assertEqual(lines[1:], [
            "Error: this unsubscribe link is not valid for a current subscription to bar (it"
            ' may have ended already); nothing changed. Without the link, send "unsubscribe'
            ' bar" from the subscribed address and confirm.'])
        self.assertEqual(await self.subscribed(), ["bar", "foo"])
        await self.store.run(unsubscribe, JANE, "foo")
        await self.store.run(subscribe, JANE, "foo")
        lines = await self.reply_lines(f"unsubscribe foo {token}", msgid="<m2@x>")
        self.assertTrue(lines[1].startswith("Error: this unsubscribe link is not valid"))
        self.assertEqual(await self.subscribed(), ["bar", "foo"])

    async def test_token_of_another_address(self):
        """A token ends the subscription it was made for, whoever sends it; nobody else's."""
        await self.store.run(subscribe, TOM, "foo")
        await self.store.run(subscribe, JANE, "foo")
        token = await self.token(TOM)
        lines = await self.reply_lines(f"unsubscribe foo {token}")
        self.assertEqual(lines[1:], [f"Unsubscribe link used: {TOM} is no longer subscribed"
                                     " to foo."])
        self.assertEqual(await self.subscribed(TOM), [])
        self.assertEqual(await self.subscribed(), ["foo"])

    async def test_forged_tokens(self):
        """Tokens made up or altered do nothing."""
        await self.store.run(subscribe, JANE, "foo")
        token = await self.token()
        sid, mac = token.split(".")
        for bad in (f"{sid}.{'A' * 22}", f"{int(sid) + 1}.{mac}", "1.x", "garbage"):
            lines = await self.reply_lines(f"unsubscribe foo {bad}", msgid=f"<{bad}@x>",
                                           sender=f"s{len(bad)}@example.net")
            self.assertTrue(lines[1].startswith("Error: this unsubscribe link is not valid"),
                            bad)
        self.assertEqual(await self.subscribed(), ["foo"])

    async def test_token_reply_does_not_count(self):
        """A reply to a token that worked leaves the day's replies as they were."""
        await self.store.run(subscribe, JANE, "foo")
        token = await self.token()
        for i in range(4):
            await self.control("which", msgid=f"<w{i}@x>")
        await self.control("", subject=f"unsubscribe foo {token}")
        _, reply, _ = await self.control("which", msgid="<w9@x>")
        self.assertTrue(reply.lines[-1].startswith(f"This is reply 5 to {JANE} today"))


TokenTests, TokenSQLiteFileTests, TokenPostgresTests = backends(TokenMixin, "Token")
