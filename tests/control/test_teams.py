"""
Team administration by mail, as an owner, a member and a stranger see it:
adding and removing members, muting, membership keywords, and the notices
members get.
"""

from tests.control import DEFAULTS, JANE, TOM, ControlMixin, backends
from trackermail.store.teams import (
    is_member,
    join_team,
    membership,
    membership_keywords,
    mute_all_memberships,
)

CONFIRM_JANE = f"Needs confirmation: a mail with a key was sent to {JANE}."
CONFIRM_TOM = f"Needs confirmation: a mail with a key was sent to {TOM}."
STRANGER = "stranger@example.net"


def items(mail) -> list[str]:
    """The C{* ...} lines of a CONFIRM mail or notice."""
    return [line for line in mail.lines if line.startswith("* ")]


class OwnerMixin(ControlMixin):
    async def test_add_member_to_private_team(self):
        """
        The owner's add-team-member is confirmed by the owner, then by the
        new member, who is then a member of the private team.
        """
        _, reply, confirmations = await self.control(f"add-team-member secret {JANE}",
                                                     sender=TOM)
        self.assertEqual(reply.lines, [f"> add-team-member secret {JANE}", CONFIRM_TOM])
        self.assertEqual(list(confirmations), [TOM])
        self.assertEqual(items(confirmations[TOM]), [
            f"* add-team-member secret {JANE}: as owner of team secret, ask {JANE} to"
            " become a member of the team"])
        _, reply, confirmations = await self.control(
            f"confirm {confirmations[TOM].key}", sender=TOM)
        self.assertEqual(reply.lines[1:], [f"Confirmed for {TOM}:", CONFIRM_JANE])
        self.assertEqual(confirmations[JANE].lines[0],
                         f"{TOM} asked the package tracker at tracker.example.org to:")
        self.assertEqual(items(confirmations[JANE]), [
            f"* join-team secret {JANE}: make {JANE} a member of team secret"])
        self.assertFalse(await self.store.run(is_member, "secret", JANE))
        lines = await self.reply_lines(f"confirm {confirmations[JANE].key}")
        self.assertEqual(lines[1:], [f"Confirmed for {JANE}:",
                                     f"{JANE} is now a member of team secret."])
        self.assertTrue(await self.store.run(is_member, "secret", JANE))

    async def test_forged_owner_gets_nothing(self):
        """A stranger writing as the owner only makes the real owner get a CONFIRM mail."""
        _, _, confirmations = await self.control(f"add-team-member secret {STRANGER}",
                                                 sender=TOM)
        self.assertEqual(list(confirmations), [TOM])
        self.assertEqual(self.mails_to(STRANGER), [])

    async def test_only_the_owner(self):
        """Others are told that only the owner may add or remove members."""
        lines = await self.reply_lines(f"add-team-member secret {JANE}\n"
                                       f"remove-team-member perl {TOM}")
        self.assertEqual(lines, [
            f"> add-team-member secret {JANE}", "Error: only the owner of team secret may do this.",
            "",
            f"> remove-team-member perl {TOM}", "Error: only the owner of team perl may do this.",
        ])
        self.assertEqual(self.mails_to(TOM), [])

    async def test_add_existing_member(self):
        """Adding a member says so and asks nobody."""
        await self.store.run(join_team, "perl", JANE)
        _, reply, confirmations = await self.control(f"add-team-member perl {JANE}",
                                                     sender=TOM)
        self.assertEqual(reply.lines[1:], [f"{JANE} is already a member of team perl."])
        self.assertEqual(confirmations, {})

    async def test_remove_member_with_notice(self):
        """Once the owner confirms, the member is removed and told so by mail."""
        await self.store.run(join_team, "perl", JANE)
        _, reply, confirmations = await self.control(f"remove-team-member perl {JANE}",
                                                     sender=TOM)
        self.assertEqual(reply.lines[1:], [CONFIRM_TOM])
        self.assertEqual(items(confirmations[TOM]), [
            f"* remove-team-member perl {JANE}: as owner of team perl, remove {JANE} from"
            " the team (it is told by mail)"])
        self.assertTrue(await self.store.run(is_member, "perl", JANE))
        _, reply, _ = await self.control(f"confirm {confirmations[TOM].key}", sender=TOM)
        self.assertEqual(reply.lines[1:], [
            f"Confirmed for {TOM}:", f"{JANE} is no longer a member of team perl.",
            f"{JANE} is told by mail."])
        self.assertFalse(await self.store.run(is_member, "perl", JANE))
        notice = self.notices[JANE]
        self.assertEqual(notice.subject, "Changes to your team memberships")
        self.assertEqual(items(notice), [f"* {TOM}, owner of team perl: removed {JANE} from"
                                         " team perl."])

    async def test_remove_non_member(self):
        """Removing someone who is not a member says so."""
        lines = await self.reply_lines(f"remove-team-member perl {JANE}", sender=TOM)
        self.assertEqual(lines[1:], [f"{JANE} is not a member of team perl."])

    async def test_owner_mutes_a_member(self):
        """The owner's mute-team TEAM EMAIL is confirmed by the owner; the member is told."""
        await self.store.run(join_team, "perl", JANE)
        _, reply, confirmations = await self.control(f"mute-team perl foo {JANE}", sender=TOM)
        self.assertEqual(reply.lines[1:], [CONFIRM_TOM])
        self.assertEqual(items(confirmations[TOM]), [
            f"* mute-team perl foo {JANE}: as owner of team perl, stop the mail to {JANE}"
            " about foo through team perl (it is told by mail)"])
        await self.control(f"confirm {confirmations[TOM].key}", sender=TOM)
        state = await self.store.run(membership, "perl", JANE)
        self.assertEqual((state.muted, state.muted_packages), (False, ("foo",)))
        self.assertEqual(items(self.notices[JANE]), [
            f"* {TOM}, owner of team perl: {JANE} gets no more mail about foo through team"
            " perl."])

    async def test_owner_sets_member_keywords(self):
        """The owner's team-keyword for a member takes effect once the owner confirms."""
        await self.store.run(join_team, "perl", JANE)
        _, _, confirmations = await self.control(f"team-keyword perl {JANE} = vcs", sender=TOM)
        await self.control(f"confirm {confirmations[TOM].key}", sender=TOM)
        self.assertEqual(await self.store.run(membership_keywords, "perl", JANE), {"vcs"})
        self.assertEqual(items(self.notices[JANE]), [
            f"* {TOM}, owner of team perl: Keywords of {JANE} in team perl are now: vcs"])

    async def test_notice_within_the_budget(self):
        """A member whose budget is spent is not told, and the owner reads why."""
        await self.store.run(join_team, "perl", JANE)
        for i in range(3):
            await self.control(f"subscribe dummy{i} {JANE}", sender=f"s{i}@example.net")
        _, _, confirmations = await self.control(f"remove-team-member perl {JANE}", sender=TOM)
        _, reply, _ = await self.control(f"confirm {confirmations[TOM].key}", sender=TOM)
        self.assertEqual(reply.lines[-1], f"{JANE} is not told by mail: it already got 3"
                                          " confirmation mails or notices today.")
        self.assertEqual(self.notices, {})
        self.assertFalse(await self.store.run(is_member, "perl", JANE))


class MemberMixin(ControlMixin):
    async def setUp(self):
        await super().setUp()
        await self.store.run(join_team, "perl", JANE)

    async def confirm(self, body, **kwargs):
        """Send C{body} from JANE and confirm it; fires with the confirm reply's lines."""
        _, reply, confirmations = await self.control(body, **kwargs)
        self.assertEqual(reply.lines[-1], CONFIRM_JANE)
        return await self.reply_lines(f"confirm {confirmations[JANE].key}")

    async def test_mute_and_unmute(self):
        """A member mutes and unmutes a membership, each once confirmed."""
        _, _, confirmations = await self.control("mute-team perl")
        self.assertEqual(items(confirmations[JANE]), [
            f"* mute-team perl {JANE}: stop the mail to {JANE} through team perl"])
        self.assertFalse((await self.store.run(membership, "perl", JANE)).muted)
        lines = await self.reply_lines(f"confirm {confirmations[JANE].key}")
        self.assertEqual(lines[2:], [f"{JANE} gets no more mail through team perl."])
        self.assertTrue((await self.store.run(membership, "perl", JANE)).muted)
        lines = await self.reply_lines("mute-team perl")
        self.assertEqual(lines[1:], [f"{JANE} has already muted team perl."])
        lines = await self.confirm("unmute-team perl")
        self.assertEqual(lines[2:], [f"{JANE} gets mail through team perl again."])
        self.assertFalse((await self.store.run(membership, "perl", JANE)).muted)

    async def test_join_muted_then_unmute(self):
        """
        A member the bounce policy muted is told by join-team how to unmute,
        and unmute-team brings the mail back.
        """
        await self.store.run(mute_all_memberships, JANE)
        lines = await self.reply_lines("join-team perl")
        self.assertIn('send "unmute-team perl"', lines[1])
        await self.confirm("unmute-team perl")
        self.assertFalse((await self.store.run(membership, "perl", JANE)).muted)

    async def test_mute_one_package(self):
        """mute-team TEAM PKG mutes one of the team's packages only."""
        lines = await self.confirm("mute-team perl foo")
        self.assertEqual(lines[2:], [f"{JANE} gets no more mail about foo through team perl."])
        state = await self.store.run(membership, "perl", JANE)
        self.assertEqual((state.muted, state.muted_packages), (False, ("foo",)))
        lines = await self.confirm("unmute-team perl libfoo1")
        self.assertEqual(lines[2:], [f"{JANE} gets mail about foo through team perl again."])

    async def test_package_not_of_the_team(self):
        """A package the team does not have is refused."""
        lines = await self.reply_lines("mute-team perl bar\nteam-keyword perl bar")
        self.assertEqual(lines, [
            "> mute-team perl bar", "Error: bar is not a package of team perl.", "",
            "> team-keyword perl bar", "Error: bar is not a package of team perl.",
        ])

    async def test_not_a_member(self):
        """Membership commands for a non-member say so."""
        lines = await self.reply_lines("mute-team perl\nunmute-team nosuch\nteam-keyword perl",
                                       sender="bob@example.net")
        self.assertEqual(lines, [
            "> mute-team perl", "bob@example.net is not a member of team perl.", "",
            "> unmute-team nosuch", "Error: there is no team nosuch.", "",
            "> team-keyword perl", "bob@example.net is not a member of team perl.",
        ])

    async def test_team_keywords(self):
        """team-keyword shows a membership's keywords and changes them once confirmed."""
        lines = await self.reply_lines("team-keyword perl")
        self.assertEqual(lines[1:], [f"Keywords of {JANE} in team perl: {DEFAULTS}"])
        lines = await self.confirm("team-keyword perl foo = vcs, bts")
        self.assertEqual(lines[2:], [f"Keywords of {JANE} in team perl for foo are now:"
                                     " bts, vcs"])
        lines = await self.confirm("team-keyword perl - bts")
        self.assertEqual(lines[2:], [f"Keywords of {JANE} in team perl are now: "
                                     "archive, bts-control, build, contact, default, summary,"
                                     " upload-source"])
        lines = await self.reply_lines("team-keyword perl foo")
        self.assertEqual(lines[1:], [f"Keywords of {JANE} in team perl for foo: bts, vcs"])

    async def test_stranger_asks_the_member(self):
        """A stranger's mute-team or team-keyword for a member asks the member, not the owner."""
        _, reply, confirmations = await self.control(
            f"mute-team perl {JANE}\nteam-keyword perl {JANE} = vcs", sender=STRANGER)
        self.assertEqual(list(confirmations), [JANE])
        self.assertEqual(len(items(confirmations[JANE])), 2)
        self.assertFalse((await self.store.run(membership, "perl", JANE)).muted)


OwnerTests, OwnerSQLiteFileTests, OwnerPostgresTests = backends(OwnerMixin, "Owner")
MemberTests, MemberSQLiteFileTests, MemberPostgresTests = backends(MemberMixin, "Member")
