"""
The daily budgets of the control bot, as a victim of forged mail and a
subscriber see them: how many mails reach an address that asked for
nothing, how many replies reach a (forged) sender, and what still works
once they are spent.
"""

from twisted.trial.unittest import SynchronousTestCase

from tests.control import DAY, JANE, NOW, TOM, ControlMixin, backends, make_config
from trackermail.store.budgets import budget_key
from trackermail.store.confirmations import purge_confirmations
from trackermail.store.outbox_report import delivery_rows
from trackermail.store.sql import Rows, Value
from trackermail.store.subscriptions import subscribe

VICTIM = "victim@example.org"
CAP_LINE = (
    "This is reply 5 to {email} today, the last one: until tomorrow, mails from this"
    " address get no answer, and only their confirm keys and unsubscribe links are"
    " acted on."
)
LIMIT_LINE = (
    "Not done: {email} already got 3 confirmation mails or notices today; try again"
    " tomorrow."
)


class BudgetKeyTests(SynchronousTestCase):
    def test_plus_suffix_and_case(self):
        """An address counts as its lower-case form without the +suffix of its local part."""
        self.assertEqual(budget_key("Jane+Lists@Example.ORG"), "jane@example.org")
        self.assertEqual(budget_key("jane+a+b@example.org"), "jane@example.org")
        self.assertEqual(budget_key("jane@example.org"), "jane@example.org")

    def test_nothing_before_the_plus(self):
        """A local part that starts with + is kept whole."""
        self.assertEqual(budget_key("+x@example.org"), "+x@example.org")


class UnsolicitedMixin(ControlMixin):
    async def test_victim_of_eight_strangers(self):
        """
        Eight strangers asking to subscribe one address get it 3 mails in a
        day, all CONFIRM mails; the others are told why not, and nobody
        gets a copy of a reply.
        """
        for i in range(8):
            stranger = f"stranger{i}@example.net"
            _, reply, _ = await self.control(f"subscribe dummy {VICTIM}", sender=stranger)
            self.assertEqual(reply.recipients, [stranger])
            self.assertIsNone(reply.msg["Cc"])
            if i >= 3:
                self.assertEqual(reply.lines[-1], LIMIT_LINE.format(email=VICTIM))
        mails = self.mails_to(VICTIM)
        self.assertEqual(len(mails), 3)
        self.assertTrue(all(m.subject.startswith("CONFIRM ") for m in mails))

    async def test_sub_addresses_share_the_budget(self):
        """victim+1@, victim+2@ ... count against the budget of victim@."""
        for i in range(1, 7):
            await self.control(f"subscribe dummy victim+{i}@example.org",
                               sender=f"stranger{i}@example.net")
        await self.control(f"subscribe dummy {VICTIM}", sender="other@example.net")
        victim_mails = [s for s in self.sent
                        if s.recipients[0].startswith("victim") and s.subject.startswith("CONFIRM")]
        self.assertEqual([m.recipients[0] for m in victim_mails],
                         ["victim+1@example.org", "victim+2@example.org", "victim+3@example.org"])

    async def test_one_mail_carries_many_requests(self):
        """Many requests for one address in one mail make one CONFIRM mail, one of its budget."""
        await self.control(f"subscribe foo {VICTIM}\nsubscribe bar {VICTIM}\n"
                           f"keyword {VICTIM} + vcs\njoin-team perl {VICTIM}", sender=TOM)
        self.assertEqual(len(self.mails_to(VICTIM)), 1)
        await self.control(f"subscribe general {VICTIM}", sender=TOM, msgid="<m2@x>")
        await self.control(f"subscribe nosuch {VICTIM}", sender=TOM, msgid="<m3@x>")
        self.assertEqual(len(self.mails_to(VICTIM)), 3)

    async def test_budget_is_per_day(self):
        """The next day the address can be asked again."""
        for i in range(4):
            await self.control(f"subscribe dummy {VICTIM}", sender=f"s{i}@example.net")
        _, _, confirmations = await self.control(f"subscribe dummy {VICTIM}",
                                                 sender="s9@example.net", now=NOW + DAY)
        self.assertEqual(list(confirmations), [VICTIM])

    async def test_own_key_in_the_reply_once_the_budget_is_spent(self):
        """
        A subscriber whose budget strangers used up can still unsubscribe:
        the key goes into the reply to the subscriber's own mail.
        """
        await self.store.run(subscribe, JANE, "foo")
        for i in range(3):
            await self.control(f"subscribe dummy{i} {JANE}", sender=f"s{i}@example.net")
        _, reply, confirmations = await self.control("unsubscribe foo")
        self.assertEqual(confirmations, {})
        self.assertEqual(reply.lines[:2], [
            "> unsubscribe foo",
            f"Needs confirmation: {JANE} already got 3 confirmation mails or notices today,"
            " so its key is at the end of this reply.",
        ])
        key_line = [line for line in reply.lines if line.startswith("confirm ")]
        self.assertEqual(len(key_line), 1)
        self.assertIn(f"* unsubscribe foo {JANE}: unsubscribe {JANE} from foo", reply.lines)
        self.assertEqual(await self.subscribed(), ["foo"])
        lines = await self.reply_lines(key_line[0])
        self.assertEqual(lines[1:], [f"Confirmed for {JANE}:",
                                     f"{JANE} is no longer subscribed to foo."])
        self.assertEqual(await self.subscribed(), [])

    async def test_no_key_in_a_reply_to_someone_else(self):
        """The key of another address never goes into a reply, budget or not."""
        for i in range(3):
            await self.control(f"subscribe dummy{i} {TOM}", sender=f"s{i}@example.net")
        _, reply, confirmations = await self.control(f"subscribe foo {TOM}")
        self.assertEqual(confirmations, {})
        self.assertFalse([line for line in reply.lines if line.startswith("confirm ")])
        self.assertEqual(reply.lines[-1], LIMIT_LINE.format(email=TOM))


class ReplyCapMixin(ControlMixin):
    async def test_backscatter_of_thirty_forged_mails(self):
        """
        30 help mails with a forged From: get 5 replies; the 5th says it is
        the last, the others are dropped with the reason.
        """
        outcomes = []
        for i in range(30):
            outcome, _, _ = await self.control("help", sender=VICTIM, msgid=f"<h{i}@x>")
            outcomes.append(outcome)
        replies = self.mails_to(VICTIM)
        self.assertEqual(len(replies), 5)
        self.assertNotIn(CAP_LINE.format(email=VICTIM), replies[3].lines)
        self.assertEqual(replies[4].lines[-1], CAP_LINE.format(email=VICTIM))
        self.assertEqual([o.action for o in outcomes], ["replied"] * 5 + ["dropped"] * 25)
        self.assertEqual(outcomes[-1].detail, f"{VICTIM} already got 5 replies today")

    async def test_sub_addresses_share_the_cap(self):
        """Forged senders victim+1@ ... victim+9@ together get 5 replies."""
        for i in range(1, 10):
            await self.control("help", sender=f"victim+{i}@example.org")
        self.assertEqual(len([s for s in self.sent if s.recipients[0].startswith("victim")]), 5)

    async def test_over_the_cap_nothing_is_done(self):
        """A mail over the cap changes nothing and asks nobody anything."""
        for i in range(5):
            await self.control("which", msgid=f"<w{i}@x>")
        outcome, reply, confirmations = await self.control(f"subscribe foo\nsubscribe foo {TOM}")
        self.assertEqual((outcome.action, reply, confirmations), ("dropped", None, {}))
        self.assertEqual(self.mails_to(TOM), [])

    async def test_confirm_key_works_over_the_cap(self):
        """A confirm key is acted on and answered over the cap; other lines are not run."""
        _, _, confirmations = await self.control("subscribe foo")
        for i in range(4):
            await self.control("which", msgid=f"<w{i}@x>")
        key = confirmations[JANE].key
        outcome, reply, _ = await self.control(f"which\nconfirm {key}")
        self.assertEqual(outcome.action, "replied")
        self.assertEqual(reply.lines, [
            "> which",
            f"Not run: {JANE} already got 5 replies today; until tomorrow only confirm"
            " keys and unsubscribe links are acted on.",
            "",
            f"> confirm {key}", f"Confirmed for {JANE}:", f"{JANE} is now subscribed to foo.",
        ])
        self.assertEqual(await self.subscribed(), ["foo"])

    async def test_an_unused_key_over_the_cap_is_dropped(self):
        """Over the cap, a key that does nothing (unknown, used) gets no answer either."""
        for i in range(5):
            await self.control("which", msgid=f"<w{i}@x>")
        outcome, reply, _ = await self.control("confirm AAAAbbbbCCCCdddd")
        self.assertEqual((outcome.action, reply), ("dropped", None))

    async def test_proven_replies_do_not_count(self):
        """The reply to a mail whose key worked does not count against the cap."""
        for i in range(4):
            await self.control("which", msgid=f"<w{i}@x>")
        _, _, confirmations = await self.control(f"subscribe foo {TOM}", sender=TOM)
        await self.control(f"confirm {confirmations[TOM].key}")
        _, reply, _ = await self.control("which", msgid="<w5@x>")
        self.assertEqual(reply.lines[-1], CAP_LINE.format(email=JANE))

    async def test_cap_is_per_day_and_configurable(self):
        """max_replies_per_day sets the cap (0: none), and the next day starts afresh."""
        config = make_config(max_replies_per_day=2)
        for i in range(3):
            outcome, _, _ = await self.control("which", config=config, msgid=f"<w{i}@x>")
        self.assertEqual(outcome.action, "dropped")
        outcome, reply, _ = await self.control("which", config=config, now=NOW + DAY)
        self.assertEqual(outcome.action, "replied")
        unlimited = make_config(max_replies_per_day=0)
        for i in range(8):
            outcome, reply, _ = await self.control("which", config=unlimited,
                                                   sender=TOM, msgid=f"<u{i}@x>")
            self.assertEqual(outcome.action, "replied")
            self.assertEqual(reply.lines, ["> which", f"{TOM} is not subscribed to any package."])

    async def test_counters_of_past_days_are_purged(self):
        """The hourly purge forgets the reply counts of earlier days, not today's."""
        await self.control("which", msgid="<w1@x>")
        await self.control("which", msgid="<w2@x>", now=NOW + DAY)
        today = (await self.store.run(lambda: (yield Value("SELECT MAX(day) FROM control_replies"))))
        await self.store.run(purge_confirmations, NOW + DAY, 3 * DAY, today)
        days = await self.store.run(lambda: (yield Rows("SELECT day, sent FROM control_replies")))
        self.assertEqual([tuple(r) for r in days], [(today, 1)])

    async def test_dropped_mails_queue_nothing(self):
        """A dropped mail over the cap leaves no delivery behind."""
        for i in range(5):
            await self.control("help", sender=VICTIM, msgid=f"<h{i}@x>")
        before = len(await self.store.run(delivery_rows))
        await self.control("help", sender=VICTIM, msgid="<h9@x>")
        self.assertEqual(len(await self.store.run(delivery_rows)), before)


UnsolicitedTests, UnsolicitedSQLiteFileTests, UnsolicitedPostgresTests = backends(
    UnsolicitedMixin, "Unsolicited")
ReplyCapTests, ReplyCapSQLiteFileTests, ReplyCapPostgresTests = backends(
    ReplyCapMixin, "ReplyCap")
