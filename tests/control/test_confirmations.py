"""
Confirmations: the CONFIRM mail, replying to it, single use, expiry, and
the limits that keep the bot from being used to flood an address.
"""

from tests.control import DAY, JANE, NOW, TOM, ControlMixin, backends, make_config
from trackermail.store.confirmations import reserve_key
from trackermail.store.subscriptions import subscribe, unsubscribe
from trackermail.store.teams import is_member


def quoted_reply(confirmation) -> tuple[str, str]:
    """(subject, body) of a mail client's reply to a CONFIRM mail."""
    body = "Yes please.\n\n" + "\n".join("> " + line for line in confirmation.text.splitlines())
    return "Re: " + confirmation.subject, body


class RoundTripMixin(ControlMixin):
    async def test_confirmation_mail(self):
        """The CONFIRM mail goes to the target, names the requester, lists what each command does."""
        _, _, confirmations = await self.control(f"subscribe foo {TOM}\nsubscribe bar {TOM}")
        mail = confirmations[TOM]
        key = mail.key
        self.assertEqual(mail.recipients, [TOM])
        self.assertEqual(mail.senders, [""])
        self.assertEqual(str(mail.msg["To"]), TOM)
        self.assertEqual(str(mail.msg["X-Loop"]), "control@tracker.example.org")
        self.assertEqual(mail.lines, [
            f"{JANE} asked the package tracker at tracker.example.org to:",
            "",
            f"* subscribe foo {TOM}: subscribe {TOM} to foo",
            f"* subscribe bar {TOM}: subscribe {TOM} to bar",
            "",
            "To confirm, reply to this mail keeping its subject, or send a mail",
            "to control@tracker.example.org containing this line:",
            "",
            f"confirm {key}",
            "",
            "The key can be used once and expires in 3 days.",
            "If you did not ask for this, ignore this mail: nothing changes.",
        ])

    async def test_reply_to_confirmation(self):
        """Replying to the CONFIRM mail, quoting it, runs its commands and reports."""
        _, _, confirmations = await self.control("subscribe foo\njoin-team perl")
        subject, body = quoted_reply(confirmations[JANE])
        _, reply, more = await self.control(body, subject=subject)
        key = confirmations[JANE].key
        self.assertEqual(reply.lines, [
            f"> CONFIRM {key}",
            f"Confirmed for {JANE}:",
            f"{JANE} is now subscribed to foo.",
            f"{JANE} is now a member of team perl.",
            "",
            "> Yes please.", 'Unknown command: ignored (send "help" for the list of commands).',
        ])
        self.assertEqual(reply.subject, f"Re: CONFIRM {key}")
        self.assertEqual(more, {})
        self.assertEqual(await self.subscribed(), ["foo"])
        self.assertTrue(await self.store.run(is_member, "perl", JANE))

    async def test_unquoted_reply(self):
        """A reply that repeats the CONFIRM mail without quoting still confirms once."""
        _, _, confirmations = await self.control("subscribe foo")
        mail = confirmations[JANE]
        _, reply, more = await self.control(mail.text, subject="Re: " + mail.subject)
        self.assertEqual(reply.lines[:4], [
            f"> CONFIRM {mail.key}", f"Confirmed for {JANE}:",
            f"{JANE} is now subscribed to foo.", "",
        ])
        self.assertIn(f"> confirm {mail.key}", reply.lines)
        self.assertEqual(more, {})
        self.assertEqual(await self.subscribed(), ["foo"])

    async def test_one_mail_per_address(self):
        """All commands of one mail for one address make exactly one CONFIRM mail."""
        await self.store.run(subscribe, TOM, "bar")
        _, reply, confirmations = await self.control(
            f"subscribe foo\nsubscribe foo {TOM}\nunsubscribe bar {TOM}\n"
            f"join-team perl\nunsubscribeall {TOM}")
        self.assertEqual(sorted(confirmations), [JANE, TOM])
        self.assertEqual([line for line in confirmations[TOM].lines if line.startswith("* ")], [
            f"* subscribe foo {TOM}: subscribe {TOM} to foo",
            f"* unsubscribe bar {TOM}: unsubscribe {TOM} from bar",
            f"* unsubscribeall {TOM}: unsubscribe {TOM} from every package",
        ])
        self.assertEqual([line for line in confirmations[JANE].lines if line.startswith("* ")], [
            f"* subscribe foo {JANE}: subscribe {JANE} to foo",
            f"* join-team perl {JANE}: make {JANE} a member of team perl",
        ])
        self.assertEqual(reply.recipients, [JANE])

    async def test_keys(self):
        """Keys carry at least 128 bits of randomness and differ."""
        keys = set()
        for i in range(5):
            _, _, confirmations = await self.control(f"subscribe foo person{i}@example.org")
            keys.add(confirmations[f"person{i}@example.org"].key)
        self.assertEqual(len(keys), 5)
        for key in keys:
            # URL-safe base64: 6 bits a character.
            self.assertGreaterEqual(len(key) * 6, 128)

    async def test_single_use(self):
        """A used key gets an error line and changes nothing."""
        _, _, confirmations = await self.control("subscribe foo")
        key = confirmations[JANE].key
        await self.control(f"confirm {key}")
        await self.store.run(unsubscribe, JANE, "foo")
        lines = await self.reply_lines(f"confirm {key}")
        self.assertEqual(lines, [f"> confirm {key}",
                                 f"Error: confirmation key {key} was already used; nothing changed."])
        self.assertEqual(await self.subscribed(), [])

    async def test_unknown_key(self):
        """An unknown key gets an error line."""
        lines = await self.reply_lines("confirm AAAAbbbbCCCCdddd", subject="Re: CONFIRM nope")
        self.assertEqual(lines, [
            "> CONFIRM nope", "Error: confirmation key nope is unknown; nothing changed.", "",
            "> confirm AAAAbbbbCCCCdddd",
            "Error: confirmation key AAAAbbbbCCCCdddd is unknown; nothing changed.",
        ])

    async def test_invalid_key(self):
        """A key with characters no key has is refused without a lookup."""
        lines = await self.reply_lines("confirm a'b;--")
        self.assertEqual(lines, ["> confirm a'b;--",
                                 "Error: \"a'b;--\" is not a valid confirmation key."])

    async def test_expired_key(self):
        """A key older than 3 days gets an error line and changes nothing."""
        _, _, confirmations = await self.control("subscribe foo")
        key = confirmations[JANE].key
        lines = await self.reply_lines(f"confirm {key}", now=NOW + 3 * DAY)
        self.assertEqual(lines, [f"> confirm {key}",
                                 f"Error: confirmation key {key} has expired; nothing changed."])
        self.assertEqual(await self.subscribed(), [])

    async def test_not_yet_expired(self):
        """A key just under 3 days old still works."""
        _, _, confirmations = await self.control("subscribe foo")
        await self.control(f"confirm {confirmations[JANE].key}", now=NOW + 3 * DAY - 60)
        self.assertEqual(await self.subscribed(), ["foo"])

    async def test_expiry_is_configurable(self):
        """confirmation_expiry_days sets the lifetime, and the mail says so."""
        config = make_config(confirmation_expiry_days=1)
        _, _, confirmations = await self.control("subscribe foo", config=config)
        mail = confirmations[JANE]
        self.assertIn("The key can be used once and expires in 1 day.", mail.lines)
        lines = await self.reply_lines(f"confirm {mail.key}", now=NOW + DAY, config=config)
        self.assertEqual(lines[1], f"Error: confirmation key {mail.key} has expired; nothing changed.")


class LimitMixin(ControlMixin):
    async def test_three_mails_a_day(self):
        """An address gets at most 3 CONFIRM mails a day; then a line says why not."""
        for package in ("foo", "bar", "general"):
            _, _, confirmations = await self.control(f"subscribe {package} {TOM}")
            self.assertEqual(list(confirmations), [TOM])
        _, reply, confirmations = await self.control(f"subscribe nosuch {TOM}\nwhich {TOM}")
        self.assertEqual(confirmations, {})
        self.assertEqual(reply.lines, [
            f"> subscribe nosuch {TOM}",
            "Warning: nosuch is not a known source, binary or pseudo package.",
            f"Not done: {TOM} already got 3 confirmation mails or notices today;"
            " try again tomorrow.",
            "",
            f"> which {TOM}", f"{TOM} is not subscribed to any package.",
        ])
        self.assertEqual(reply.recipients, [JANE])
        _, _, confirmations = await self.control(f"subscribe nosuch {TOM}", now=NOW + DAY)
        self.assertEqual(list(confirmations), [TOM])

    async def test_limit_is_per_address(self):
        """Another address is not affected by one address's limit."""
        for package in ("foo", "bar", "general"):
            await self.control(f"subscribe {package} {TOM}")
        _, _, confirmations = await self.control("subscribe foo")
        self.assertEqual(list(confirmations), [JANE])

    async def test_limit_is_configurable(self):
        """max_confirmations_per_day sets the limit."""
        config = make_config(max_confirmations_per_day=1)
        await self.control(f"subscribe foo {TOM}", config=config)
        _, reply, confirmations = await self.control(f"subscribe bar {TOM}", config=config)
        self.assertEqual(confirmations, {})
        self.assertEqual(reply.lines[-1], f"Not done: {TOM} already got 1 confirmation "
                                          "mails or notices today; try again tomorrow.")

    async def test_same_request_same_key(self):
        """Asking again re-sends the same key (within the limit)."""
        _, _, first = await self.control("subscribe foo")
        _, _, second = await self.control("subscribe foo", msgid="<m2@example.org>")
        self.assertEqual(first[JANE].key, second[JANE].key)
        await self.control(f"confirm {first[JANE].key}")
        self.assertEqual(await self.subscribed(), ["foo"])

    async def test_subset_reuses_key(self):
        """A request already held by a pending key re-sends that key, listing all its commands."""
        _, _, first = await self.control("subscribe foo\nsubscribe bar")
        _, _, second = await self.control("subscribe bar")
        self.assertEqual(first[JANE].key, second[JANE].key)
        self.assertEqual(len([line for line in second[JANE].lines if line.startswith("* ")]), 2)

    async def test_one_pending_key_per_command(self):
        """A command moves to the newest key: the older key no longer holds it."""
        _, _, first = await self.control("subscribe foo\nsubscribe bar")
        _, _, second = await self.control("subscribe foo\njoin-team perl")
        self.assertNotEqual(first[JANE].key, second[JANE].key)
        lines = await self.reply_lines(f"confirm {first[JANE].key}")
        self.assertEqual(lines[1:], [f"Confirmed for {JANE}:", f"{JANE} is now subscribed to bar."])
        self.assertEqual(await self.subscribed(), ["bar"])

    async def test_emptied_key_is_gone(self):
        """A key whose every command moved to a newer key is unknown."""
        _, _, first = await self.control("subscribe foo")
        _, _, second = await self.control("subscribe foo\nsubscribe bar")
        key = first[JANE].key
        lines = await self.reply_lines(f"confirm {key}")
        self.assertEqual(lines[1], f"Error: confirmation key {key} is unknown; nothing changed.")
        await self.control(f"confirm {second[JANE].key}")
        self.assertEqual(await self.subscribed(), ["bar", "foo"])

    async def test_reserve_key_program(self):
        """reserve_key keeps one pending key per (command, address) at the store level."""
        commands = [["subscribe", "foo", JANE]]
        key1, listed = await self.store.run(reserve_key, JANE, commands, NOW, 3 * DAY)
        self.assertEqual(listed, commands)
        key2, _ = await self.store.run(reserve_key, JANE.upper(), commands, NOW + 1, 3 * DAY)
        self.assertEqual(key1, key2)
        key3, _ = await self.store.run(reserve_key, JANE, commands, NOW + 3 * DAY, 3 * DAY)
        self.assertNotEqual(key1, key3)


RoundTripTests, RoundTripSQLiteFileTests, RoundTripPostgresTests = backends(
    RoundTripMixin, "RoundTrip")
LimitTests, LimitSQLiteFileTests, LimitPostgresTests = backends(LimitMixin, "Limit")
