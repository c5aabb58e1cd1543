"""
Each control command, as a user sees it: the exact lines of the reply.
"""

import re

from tests.control import DEFAULTS, JANE, TOM, ControlMixin, backends
from trackermail.control import texts
from trackermail.store.keywords import default_keywords
from trackermail.store.subscriptions import subscribe
from trackermail.store.teams import is_member, join_team, set_membership_muted

CONFIRM_JANE = f"Needs confirmation: a mail with a key was sent to {JANE}."
CONFIRM_TOM = f"Needs confirmation: a mail with a key was sent to {TOM}."


class SubscribeMixin(ControlMixin):
    async def test_subscribe_needs_confirmation(self):
        """subscribe mails a key and changes nothing until it is used."""
        outcome, reply, confirmations = await self.control("subscribe foo")
        self.assertEqual(reply.lines, ["> subscribe foo", CONFIRM_JANE])
        self.assertEqual(list(confirmations), [JANE])
        self.assertEqual(await self.subscribed(), [])
        self.assertEqual(outcome.action, "replied")

    async def test_subscribe_confirmed(self):
        """Using the key subscribes and says so."""
        _, _, confirmations = await self.control("subscribe foo")
        key = confirmations[JANE].key
        lines = await self.reply_lines(f"confirm {key}")
        self.assertEqual(lines, [f"> confirm {key}", f"Confirmed for {JANE}:",
                                 f"{JANE} is now subscribed to foo."])
        self.assertEqual(await self.subscribed(), ["foo"])

    async def test_binary_package(self):
        """A binary package name subscribes to its source, with a warning."""
        _, reply, confirmations = await self.control("subscribe libfoo1")
        self.assertEqual(reply.lines, [
            "> subscribe libfoo1",
            "Warning: libfoo1 is a binary package; using its source package foo.",
            CONFIRM_JANE,
        ])
        self.assertIn("* subscribe foo jane@example.org: subscribe jane@example.org to foo",
                      confirmations[JANE].lines)

    async def test_unknown_package(self):
        """An unknown name warns but works as distro-tracker does."""
        _, reply, confirmations = await self.control("subscribe nosuch")
        self.assertEqual(reply.lines, [
            "> subscribe nosuch",
            "Warning: nosuch is not a known source, binary or pseudo package.",
            CONFIRM_JANE,
        ])
        await self.control(f"confirm {confirmations[JANE].key}")
        self.assertEqual(await self.subscribed(), ["nosuch"])

    async def test_pseudo_package(self):
        """A pseudo package is subscribed to without a warning."""
        lines = await self.reply_lines("subscribe general")
        self.assertEqual(lines, ["> subscribe general", CONFIRM_JANE])

    async def test_other_address(self):
        """subscribe PKG EMAIL asks EMAIL, not the sender."""
        _, reply, confirmations = await self.control(f"subscribe foo {TOM}")
        self.assertEqual(reply.lines, [f"> subscribe foo {TOM}", CONFIRM_TOM])
        self.assertEqual(list(confirmations), [TOM])

    async def test_invalid_email(self):
        """An invalid email is refused with a line saying so, and nobody is mailed."""
        _, reply, confirmations = await self.control("subscribe foo not-an-address@")
        self.assertEqual(reply.lines, [
            "> subscribe foo not-an-address@",
            'Error: "not-an-address@" is not a valid email address.',
        ])
        self.assertEqual(confirmations, {})

    async def test_invalid_package(self):
        """A name that cannot be a package is refused."""
        lines = await self.reply_lines("subscribe f_o!o")
        self.assertEqual(lines, ["> subscribe f_o!o",
                                 'Error: "f_o!o" is not a valid package name.'])

    async def test_package_name_case(self):
        """Package names are read in lower case."""
        lines = await self.reply_lines("subscribe FOO")
        self.assertEqual(lines, ["> subscribe FOO", CONFIRM_JANE])

    async def test_already_subscribed(self):
        """Subscribing again says so and mails nobody."""
        await self.store.run(subscribe, JANE, "foo")
        _, reply, confirmations = await self.control("subscribe foo")
        self.assertEqual(reply.lines, ["> subscribe foo",
                                       f"{JANE} is already subscribed to foo."])
        self.assertEqual(confirmations, {})


class UnsubscribeMixin(ControlMixin):
    async def test_not_subscribed(self):
        """unsubscribe from a package one is not subscribed to says so."""
        _, reply, confirmations = await self.control("unsubscribe foo")
        self.assertEqual(reply.lines, ["> unsubscribe foo",
                                       f"{JANE} is not subscribed to foo."])
        self.assertEqual(confirmations, {})

    async def test_unsubscribe_confirmed(self):
        """unsubscribe needs confirmation, then unsubscribes."""
        await self.store.run(subscribe, JANE, "foo")
        _, reply, confirmations = await self.control("unsubscribe foo")
        self.assertEqual(reply.lines, ["> unsubscribe foo", CONFIRM_JANE])
        self.assertEqual(await self.subscribed(), ["foo"])
        key = confirmations[JANE].key
        lines = await self.reply_lines(f"confirm {key}")
        self.assertEqual(lines, [f"> confirm {key}", f"Confirmed for {JANE}:",
                                 f"{JANE} is no longer subscribed to foo."])
        self.assertEqual(await self.subscribed(), [])

    async def test_binary_name(self):
        """unsubscribe with a binary name means its source package."""
        await self.store.run(subscribe, JANE, "foo")
        lines = await self.reply_lines("unsubscribe libfoo1")
        self.assertEqual(lines, [
            "> unsubscribe libfoo1",
            "Warning: libfoo1 is a binary package; using its source package foo.",
            CONFIRM_JANE,
        ])

    async def test_unsubscribeall(self):
        """unsubscribeall lists what it removed once confirmed."""
        await self.store.run(subscribe, JANE, "foo")
        await self.store.run(subscribe, JANE, "bar")
        _, reply, confirmations = await self.control("unsubscribeall")
        self.assertEqual(reply.lines, ["> unsubscribeall", CONFIRM_JANE])
        self.assertIn(f"* unsubscribeall {JANE}: unsubscribe {JANE} from every package",
                      confirmations[JANE].lines)
        key = confirmations[JANE].key
        lines = await self.reply_lines(f"confirm {key}")
        self.assertEqual(lines, [f"> confirm {key}", f"Confirmed for {JANE}:",
                                 f"{JANE} is no longer subscribed to:", "* bar", "* foo"])
        self.assertEqual(await self.subscribed(), [])

    async def test_unsubscribeall_nothing(self):
        """unsubscribeall without subscriptions says so and mails nobody."""
        _, reply, confirmations = await self.control(f"unsubscribeall {TOM}")
        self.assertEqual(reply.lines, [f"> unsubscribeall {TOM}",
                                       f"{TOM} is not subscribed to any package."])
        self.assertEqual(confirmations, {})


class WhichWhoMixin(ControlMixin):
    async def test_which(self):
        """which lists the sender's subscriptions, one per line."""
        await self.store.run(subscribe, JANE, "foo")
        await self.store.run(subscribe, JANE, "bar")
        lines = await self.reply_lines("which")
        self.assertEqual(lines, ["> which", f"{JANE} is subscribed to:", "* bar", "* foo"])

    async def test_which_other_address(self):
        """which EMAIL lists another address's subscriptions."""
        lines = await self.reply_lines(f"which {TOM}")
        self.assertEqual(lines, [f"> which {TOM}", f"{TOM} is not subscribed to any package."])

    async def test_who_obfuscates(self):
        """who lists subscribers with their domains hidden."""
        await self.store.run(subscribe, JANE, "foo")
        await self.store.run(subscribe, TOM, "foo")
        lines = await self.reply_lines("who foo")
        self.assertEqual(lines, ["> who foo", "Subscribers of foo:",
                                 "* jane@e......o..", "* tom@e......c.."])

    async def test_who_nobody(self):
        """who on a package without subscribers says so."""
        lines = await self.reply_lines("who bar")
        self.assertEqual(lines, ["> who bar", "bar has no subscribers."])

    async def test_who_binary(self):
        """who with a binary name answers for its source."""
        lines = await self.reply_lines("who foo-doc")
        self.assertEqual(lines, [
            "> who foo-doc",
            "Warning: foo-doc is a binary package; using its source package foo.",
            "foo has no subscribers.",
        ])


class KeywordMixin(ControlMixin):
    async def test_view_default(self):
        """keyword shows the sender's default keywords."""
        lines = await self.reply_lines("keyword")
        self.assertEqual(lines, ["> keyword", f"Default keywords of {JANE}: {DEFAULTS}"])

    async def confirmed_lines(self, body, confirm_as=JANE, **kwargs):
        """Send C{body}, then confirm as C{confirm_as}; fires with the confirm reply's lines."""
        _, _, confirmations = await self.control(body, **kwargs)
        return await self.reply_lines(f"confirm {confirmations[confirm_as].key}")

    async def test_edit_default_needs_confirmation(self):
        """keyword +/-/= asks for a confirmation and changes nothing before it."""
        _, reply, confirmations = await self.control("keyword + vcs")
        self.assertEqual(reply.lines, ["> keyword + vcs", CONFIRM_JANE])
        self.assertIn(f"* keyword {JANE} + vcs: add vcs to the default keywords of {JANE}",
                      confirmations[JANE].lines)
        self.assertEqual(await self.store.run(default_keywords, JANE), set(DEFAULTS.split(", ")))

    async def test_edit_default(self):
        """keyword +/-/= edit the default set once confirmed, in order, and show the result."""
        lines = await self.confirmed_lines("keywords + vcs\ntag - bts,build\ntags = vcs summary")
        self.assertEqual(lines[1:], [
            f"Confirmed for {JANE}:",
            f"Default keywords of {JANE} are now: "
            "archive, bts, bts-control, build, contact, default, summary, upload-source, vcs",
            f"Default keywords of {JANE} are now: "
            "archive, bts-control, contact, default, summary, upload-source, vcs",
            f"Default keywords of {JANE} are now: summary, vcs",
        ])
        self.assertEqual(await self.store.run(default_keywords, JANE), {"summary", "vcs"})

    async def test_edit_default_of_other_address(self):
        """keyword EMAIL = ... asks EMAIL, and only its key makes the change."""
        _, reply, confirmations = await self.control(f"keyword {TOM} = vcs")
        self.assertEqual(reply.lines, [f"> keyword {TOM} = vcs", CONFIRM_TOM])
        self.assertEqual(list(confirmations), [TOM])
        await self.control(f"confirm {confirmations[TOM].key}", sender=TOM)
        self.assertEqual(await self.store.run(default_keywords, TOM), {"vcs"})

    async def test_unknown_keyword_warns(self):
        """An unknown keyword is a warning; the others still wait for confirmation."""
        _, reply, confirmations = await self.control("keyword = vcs nope")
        self.assertEqual(reply.lines, ["> keyword = vcs nope",
                                       'Warning: "nope" is not a keyword: ignored.',
                                       CONFIRM_JANE])
        self.assertIn(f"* keyword {JANE} = vcs: make vcs the default keywords of {JANE}",
                      confirmations[JANE].lines)

    async def test_only_unknown_keywords(self):
        """With no valid keyword at all, nothing changes and nobody is asked."""
        _, reply, confirmations = await self.control("keyword = nope")
        self.assertEqual(reply.lines, ["> keyword = nope",
                                       'Warning: "nope" is not a keyword: ignored.',
                                       "Error: no valid keyword given: nothing changed."])
        self.assertEqual(confirmations, {})
        self.assertEqual(await self.store.run(default_keywords, JANE),
                         set(DEFAULTS.split(", ")))

    async def test_package_keywords(self):
        """keyword PKG shows one subscription's keywords; an edit waits for confirmation."""
        await self.store.run(subscribe, JANE, "foo")
        _, reply, confirmations = await self.control("keyword foo\nkeyword foo = bts vcs")
        self.assertEqual(reply.lines, [
            "> keyword foo",
            f"Keywords of {JANE} for foo: {DEFAULTS}",
            "",
            "> keyword foo = bts vcs",
            CONFIRM_JANE,
        ])
        self.assertIn(f"* keyword foo {JANE} = bts vcs: make bts, vcs the keywords of {JANE}"
                      " for foo", confirmations[JANE].lines)
        lines = await self.reply_lines(f"confirm {confirmations[JANE].key}")
        self.assertEqual(lines[2:], [f"Keywords of {JANE} for foo are now: bts, vcs"])

    async def test_package_keywords_other_address(self):
        """keyword PKG EMAIL - ... is confirmed by EMAIL, then edits its subscription."""
        await self.store.run(subscribe, TOM, "foo")
        lines = await self.confirmed_lines(f"tag foo {TOM} - default, bts", confirm_as=TOM)
        self.assertEqual(lines[1:], [
            f"Confirmed for {TOM}:",
            f"Keywords of {TOM} for foo are now: "
            "archive, bts-control, build, contact, summary, upload-source",
        ])

    async def test_package_keywords_not_subscribed(self):
        """keyword PKG for a package one is not subscribed to says so."""
        lines = await self.reply_lines("keyword bar + vcs")
        self.assertEqual(lines, ["> keyword bar + vcs", f"{JANE} is not subscribed to bar."])


class TeamMixin(ControlMixin):
    async def test_join_team_confirmed(self):
        """join-team needs confirmation, then makes the address a member."""
        _, reply, confirmations = await self.control("join-team perl")
        self.assertEqual(reply.lines, ["> join-team perl", CONFIRM_JANE])
        self.assertFalse(await self.store.run(is_member, "perl", JANE))
        key = confirmations[JANE].key
        lines = await self.reply_lines(f"confirm {key}")
        self.assertEqual(lines, [f"> confirm {key}", f"Confirmed for {JANE}:",
                                 f"{JANE} is now a member of team perl."])
        self.assertTrue(await self.store.run(is_member, "perl", JANE))

    async def test_join_unknown_team(self):
        """join-team with an unknown slug says so."""
        lines = await self.reply_lines("join-team nosuch")
        self.assertEqual(lines, ["> join-team nosuch", "Error: there is no team nosuch."])

    async def test_join_private_team(self):
        """A private team cannot be joined by asking; the reply names the owner's command."""
        _, reply, confirmations = await self.control("join-team secret")
        self.assertEqual(reply.lines, [
            "> join-team secret",
            "Error: team secret is not open to everyone: its owner can add you with"
            ' "add-team-member secret EMAIL".',
        ])
        self.assertEqual(confirmations, {})

    async def test_owner_cannot_join_someone_to_private_team(self):
        """Even its owner's join-team TEAM EMAIL does not open a private team: add-team-member does."""
        _, reply, confirmations = await self.control(f"join-team secret {JANE}", sender=TOM)
        self.assertIn("add-team-member secret EMAIL", reply.lines[1])
        self.assertEqual(confirmations, {})

    async def test_join_already_member(self):
        """Joining a team again says so."""
        lines = await self.reply_lines("join-team perl", sender=TOM)
        self.assertEqual(lines, ["> join-team perl", f"{TOM} is already a member of team perl."])

    async def test_join_muted_membership(self):
        """join-team on a muted membership says how to unmute it."""
        await self.store.run(set_membership_muted, "perl", TOM, True)
        lines = await self.reply_lines("join-team perl", sender=TOM)
        self.assertEqual(lines, [
            "> join-team perl",
            f'{TOM} is already a member of team perl, but muted: send "unmute-team perl"'
            " to get its mail again."])

    async def test_leave_team(self):
        """leave-team needs the member's confirmation, then ends the membership."""
        await self.store.run(join_team, "perl", JANE)
        _, reply, confirmations = await self.control(
            "leave-team perl\nleave-team perl\nleave-team nosuch")
        self.assertEqual(reply.lines, [
            "> leave-team perl", CONFIRM_JANE, "",
            "> leave-team perl", "Same command as above: not run again.", "",
            "> leave-team nosuch", "Error: there is no team nosuch.",
        ])
        self.assertTrue(await self.store.run(is_member, "perl", JANE))
        lines = await self.reply_lines(f"confirm {confirmations[JANE].key}")
        self.assertEqual(lines[1:], [f"Confirmed for {JANE}:",
                                     f"{JANE} is no longer a member of team perl."])
        self.assertFalse(await self.store.run(is_member, "perl", JANE))

    async def test_leave_team_not_member(self):
        """leave-team for a non-member says so."""
        lines = await self.reply_lines("leave-team perl")
        self.assertEqual(lines, ["> leave-team perl", f"{JANE} is not a member of team perl."])

    async def test_list_team_packages(self):
        """list-team-packages lists a public team's packages."""
        lines = await self.reply_lines("list-team-packages perl")
        self.assertEqual(lines, ["> list-team-packages perl", "Packages of team perl:",
                                 "* foo"])

    async def test_list_private_team_packages(self):
        """A private team's packages are listed to its members only."""
        lines = await self.reply_lines("list-team-packages secret")
        self.assertEqual(lines, [
            "> list-team-packages secret",
            "Error: team secret is private: only its members may list its packages.",
        ])
        lines = await self.reply_lines("list-team-packages secret", sender=TOM)
        self.assertEqual(lines, ["> list-team-packages secret", "Packages of team secret:",
                                 "* bar"])

    async def test_which_teams(self):
        """which-teams lists memberships; someone else's private ones stay hidden."""
        lines = await self.reply_lines("which-teams", sender=TOM)
        self.assertEqual(lines, ["> which-teams", f"{TOM} is a member of:",
                                 "* perl (Perl Group)", "* secret (Secret Team)"])
        lines = await self.reply_lines(f"which-teams {TOM}")
        self.assertEqual(lines, [f"> which-teams {TOM}", f"{TOM} is a member of:",
                                 "* perl (Perl Group)"])
        lines = await self.reply_lines("which-teams")
        self.assertEqual(lines, ["> which-teams", f"{JANE} is not a member of any team."])


class OtherCommandsMixin(ControlMixin):
    async def test_help(self):
        """help lists every command."""
        lines = await self.reply_lines("help")
        self.assertEqual(lines[:2], [
            "> help",
            "Commands understood by control@tracker.example.org"
            " (EMAIL defaults to your From: address):",
        ])
        for usage in texts.USAGES.values():
            # Every command, with its arguments as its usage line names them.
            name, _, args = usage.partition(" ")
            words = [w for w in re.split(r"[\[\]| ]+", args) if w and w != "..."]
            shown = [line for line in lines if line.startswith(f"* {name} ")
                     or line.startswith(f"* {name}:")]
            self.assertTrue(shown, name)
            for word in words:
                self.assertTrue(any(word in line for line in shown), (name, word))
        self.assertTrue(any(line.startswith("* quit") for line in lines))
        self.assertIn("This includes keyword changes, which distro-tracker makes at once.",
                      lines)
        self.assertEqual(lines[-1], "A human reads owner@tracker.example.org.")

    async def test_usage(self):
        """A known command with wrong arguments gets its usage."""
        lines = await self.reply_lines("subscribe\nwho a b")
        self.assertEqual(lines, [
            "> subscribe", "Error: usage: subscribe PACKAGE [EMAIL]", "",
            "> who a b", "Error: usage: who PACKAGE",
        ])


SubscribeTests, SubscribeSQLiteFileTests, SubscribePostgresTests = backends(
    SubscribeMixin, "Subscribe")
UnsubscribeTests, UnsubscribeSQLiteFileTests, UnsubscribePostgresTests = backends(
    UnsubscribeMixin, "Unsubscribe")
WhichWhoTests, WhichWhoSQLiteFileTests, WhichWhoPostgresTests = backends(
    WhichWhoMixin, "WhichWho")
KeywordTests, KeywordSQLiteFileTests, KeywordPostgresTests = backends(
    KeywordMixin, "Keyword")
TeamTests, TeamSQLiteFileTests, TeamPostgresTests = backends(TeamMixin, "Team")
OtherCommandsTests, OtherCommandsSQLiteFileTests, OtherCommandsPostgresTests = backends(
    OtherCommandsMixin, "OtherCommands")
