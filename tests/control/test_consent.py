"""
The consent rule as a stranger and a victim see it: no change to an
address's subscriptions, keywords or memberships without that address's
key; and how the waiting changes are stored and run.
"""

from twisted.trial.unittest import SynchronousTestCase

from tests.control import DAY, DEFAULTS, JANE, NOW, TOM, ControlMixin, backends
from trackermail.control.stored import Change, describe
from trackermail.store.confirmations import create_confirmation
from trackermail.store.keywords import default_keywords
from trackermail.store.subscriptions import subscribe, subscription_keywords
from trackermail.store.teams import is_member, join_team, membership

STRANGER = "stranger@example.net"


class StrangerMixin(ControlMixin):
    async def test_stranger_removes_nobody_from_a_team(self):
        """leave-team for the owner, sent by a stranger, only asks the owner."""
        _, reply, confirmations = await self.control(f"leave-team perl {TOM}", sender=STRANGER)
        self.assertEqual(reply.lines, [f"> leave-team perl {TOM}",
                                       f"Needs confirmation: a mail with a key was sent to {TOM}."])
        self.assertTrue(await self.store.run(is_member, "perl", TOM))
        mail = confirmations[TOM]
        self.assertEqual(mail.lines[0],
                         f"{STRANGER} asked the package tracker at tracker.example.org to:")
        self.assertIn(f"* leave-team perl {TOM}: end the membership of {TOM} in team perl",
                      mail.lines)

    async def test_stranger_changes_no_keywords(self):
        """A stranger's keyword change for a victim waits for the victim's key, forever."""
        await self.store.run(subscribe, JANE, "foo")
        _, reply, confirmations = await self.control(f"keyword foo {JANE} = vcs\n"
                                                     f"keyword {JANE} = vcs", sender=STRANGER)
        self.assertEqual(list(confirmations), [JANE])
        self.assertEqual(self.mails_to(STRANGER)[0].recipients, [STRANGER])
        for day in (0, 1, 5):
            await self.control("which", sender=STRANGER, now=NOW + day * DAY)
        self.assertEqual(await self.store.run(subscription_keywords, JANE, "foo"),
                         set(DEFAULTS.split(", ")))
        self.assertEqual(await self.store.run(default_keywords, JANE),
                         set(DEFAULTS.split(", ")))

    async def test_stranger_unsubscribes_nobody(self):
        """unsubscribe and unsubscribeall for a victim only ask the victim."""
        await self.store.run(subscribe, JANE, "foo")
        await self.control(f"unsubscribe foo {JANE}\nunsubscribeall {JANE}", sender=STRANGER)
        self.assertEqual(await self.subscribed(), ["foo"])

    async def test_stranger_mutes_nobody(self):
        """mute-team for a member, from a stranger, changes nothing until the member confirms."""
        await self.store.run(join_team, "perl", JANE)
        await self.control(f"mute-team perl {JANE}", sender=STRANGER)
        self.assertFalse((await self.store.run(membership, "perl", JANE)).muted)

    async def test_a_key_confirms_for_its_address_only(self):
        """Whoever sends a key, it runs what its address was asked, for that address."""
        _, _, confirmations = await self.control(f"subscribe foo {TOM}", sender=STRANGER)
        lines = await self.reply_lines(f"confirm {confirmations[TOM].key}", sender=STRANGER)
        self.assertEqual(lines[1:], [f"Confirmed for {TOM}:", f"{TOM} is now subscribed to foo."])
        self.assertEqual(await self.subscribed(STRANGER), [])


class StoredMixin(ControlMixin):
    async def run_key(self, email, stored, sender=None):
        """Store a key for C{email} holding C{stored}, send it; fires with the reply's lines."""
        await self.store.run(create_confirmation, "KEY1", email, stored, NOW)
        return await self.reply_lines("confirm KEY1", sender=sender or email)

    async def test_owner_key_of_someone_else(self):
        """An owner's change confirmed with the key of another address is not made."""
        await self.store.run(join_team, "perl", JANE)
        lines = await self.run_key(JANE, [Change("remove-team-member", JANE, slug="perl",
                                                 owner=TOM).stored()])
        self.assertEqual(lines[1:], [f"Confirmed for {JANE}:",
                                     f"Not done: {TOM} is no longer the owner of team perl."])
        self.assertTrue(await self.store.run(is_member, "perl", JANE))

    async def test_owner_key_of_an_address_that_is_not_the_owner(self):
        """A stored owner's change whose owner is not the team's owner is not made."""
        await self.store.run(join_team, "perl", JANE)
        lines = await self.run_key(JANE, [Change("remove-team-member", TOM, slug="perl",
                                                 owner=JANE).stored()])
        self.assertEqual(lines[2:], [f"Not done: {JANE} is no longer the owner of team perl."])
        self.assertTrue(await self.store.run(is_member, "perl", TOM))

    async def test_broken_stored_commands(self):
        """A stored command nobody can run gets a line saying so, and the others still run."""
        lines = await self.run_key(JANE, [["frobnicate", JANE], ["subscribe", "foo", "not@"],
                                          ["as-owner", 3, "subscribe"],
                                          ["subscribe", "foo", JANE]])
        self.assertEqual(lines[1:], [
            f"Confirmed for {JANE}:",
            'Error: a confirmed command could not be run: ["frobnicate", "jane@example.org"]',
            'Error: a confirmed command could not be run: ["subscribe", "foo", "not@"]',
            'Error: a confirmed command could not be run: ["as-owner", 3, "subscribe"]',
            f"{JANE} is now subscribed to foo.",
        ])

    async def test_team_gone_before_confirmation(self):
        """A change for a team that no longer exists says so."""
        lines = await self.run_key(JANE, [Change("mute-team", JANE, slug="gone").stored(),
                                          Change("join-team", JANE, slug="gone").stored()])
        self.assertEqual(lines[2:], ["Error: there is no team gone."] * 2)

    async def test_membership_gone_before_confirmation(self):
        """A mute confirmed after the member left says the address is not a member."""
        lines = await self.run_key(JANE, [Change("mute-team", JANE, slug="perl").stored()])
        self.assertEqual(lines[2:], [f"{JANE} is not a member of team perl."])


class ChangeTests(SynchronousTestCase):
    CHANGES = [
        Change("subscribe", JANE, "foo"),
        Change("unsubscribe", JANE, "foo"),
        Change("unsubscribeall", JANE),
        Change("join-team", JANE, slug="perl"),
        Change("leave-team", JANE, slug="perl"),
        Change("keyword", JANE, "", op="+", names="vcs bts"),
        Change("keyword", JANE, "foo", op="=", names="vcs"),
        Change("mute-team", JANE, "", "perl"),
        Change("unmute-team", JANE, "foo", "perl"),
        Change("team-keyword", JANE, "foo", "perl", op="-", names="bts"),
        Change("add-team-member", JANE, slug="perl", owner=TOM),
        Change("remove-team-member", JANE, slug="perl", owner=TOM),
        Change("mute-team", JANE, "", "perl", owner=TOM),
    ]

    def test_round_trip(self):
        """Every change reads back from its stored list as it was."""
        for change in self.CHANGES:
            self.assertEqual(Change.read(change.stored()), change, change)

    def test_old_stored_forms(self):
        """Keys stored before team administration existed still read."""
        self.assertEqual(Change.read(["subscribe", "foo", JANE]), Change("subscribe", JANE, "foo"))
        self.assertEqual(Change.read(["join-team", "perl", JANE]),
                         Change("join-team", JANE, slug="perl"))

    def test_unreadable(self):
        """Anything else reads as no change."""
        for stored in ([], ["subscribe"], ["subscribe", 1, JANE], "subscribe", None,
                       ["as-owner", "", "subscribe", "foo", JANE], ["as-owner", TOM]):
            self.assertIsNone(Change.read(stored), stored)

    def test_descriptions(self):
        """The CONFIRM mail says the command and what it does, in words."""
        self.assertEqual([describe(c.stored()) for c in self.CHANGES], [
            f"subscribe foo {JANE}: subscribe {JANE} to foo",
            f"unsubscribe foo {JANE}: unsubscribe {JANE} from foo",
            f"unsubscribeall {JANE}: unsubscribe {JANE} from every package",
            f"join-team perl {JANE}: make {JANE} a member of team perl",
            f"leave-team perl {JANE}: end the membership of {JANE} in team perl",
            f"keyword {JANE} + vcs bts: add vcs, bts to the default keywords of {JANE}",
            f"keyword foo {JANE} = vcs: make vcs the keywords of {JANE} for foo",
            f"mute-team perl {JANE}: stop the mail to {JANE} through team perl",
            f"unmute-team perl foo {JANE}: send mail to {JANE} about foo through team perl"
            " again",
            f"team-keyword perl foo {JANE} - bts: remove bts from the keywords of {JANE} in"
            " team perl for foo",
            f"add-team-member perl {JANE}: as owner of team perl, ask {JANE} to become a"
            " member of the team",
            f"remove-team-member perl {JANE}: as owner of team perl, remove {JANE} from the"
            " team (it is told by mail)",
            f"mute-team perl {JANE}: as owner of team perl, stop the mail to {JANE} through"
            " team perl (it is told by mail)",
        ])
        self.assertEqual(describe(["frobnicate", 1]), "frobnicate 1")


StrangerTests, StrangerSQLiteFileTests, StrangerPostgresTests = backends(
    StrangerMixin, "Stranger")
StoredTests, StoredSQLiteFileTests, StoredPostgresTests = backends(StoredMixin, "Stored")
