"""
Tests for L{trackermail.control.handler}: how a control mail is read, how it
is answered, which mails get no answer, and hostile input.
"""

from tests.control import (
    CONTROL,
    DAY,
    JANE,
    NOW,
    TOM,
    ControlMixin,
    backends,
    make_incoming,
    make_mail,
)
from trackermail.control import commands
from trackermail.control.handler import handle_control
from trackermail.handling import Context
from trackermail.store.keywords import default_keywords
from trackermail.store.outbox_report import delivery_rows

FOOTER = ["-- ",
          'The package tracker at tracker.example.org; send "help" to '
          "control@tracker.example.org."]
NOT_A_COMMAND = 'Unknown command: ignored (send "help" for the list of commands).'


class ReadingMixin(ControlMixin):
    async def test_echo_and_skipped_lines(self):
        """Each line is echoed with its output; blank, # and quoted lines are skipped."""
        _, reply, _ = await self.control("\n# my subscriptions\n\nwhich\n> quoted\n\nwho foo\n")
        self.assertEqual(reply.text.splitlines(), [
            "> which", f"{JANE} is not subscribed to any package.", "",
            "> who foo", "foo has no subscribers.", "",
        ] + FOOTER)

    async def test_subject_is_first_line(self):
        """The Subject, Re: removed, is run before the body."""
        lines = await self.reply_lines("who foo", subject="Re: which")
        self.assertEqual(lines, ["> which", f"{JANE} is not subscribed to any package.", "",
                                 "> who foo", "foo has no subscribers."])

    async def test_subject_not_a_command(self):
        """A Subject that is not a command is neither echoed nor counted."""
        lines = await self.reply_lines("which", subject="my subscriptions please")
        self.assertEqual(lines, ["> which", f"{JANE} is not subscribed to any package."])

    async def test_duplicates_run_once(self):
        """The same command twice (Subject and body, any case, explicit EMAIL) runs once."""
        _, reply, confirmations = await self.control(
            f"subscribe foo\nSUBSCRIBE foo {JANE.upper()}", subject="subscribe foo")
        self.assertEqual(reply.lines, [
            "> subscribe foo",
            f"Needs confirmation: a mail with a key was sent to {JANE}.", "",
            "> subscribe foo", "Same command as above: not run again.", "",
            f"> SUBSCRIBE foo {JANE.upper()}", "Same command as above: not run again.",
        ])
        self.assertEqual(
            [line for line in confirmations[JANE].lines if line.startswith("* ")],
            [f"* subscribe foo {JANE}: subscribe {JANE} to foo"])

    async def test_stops_after_five_non_commands(self):
        """After 5 lines that are not commands, reading stops with a line saying so."""
        body = "which\nhello\nI would like\nto know\nmore about\nthis\nwho foo\n"
        lines = await self.reply_lines(body)
        self.assertEqual(lines, [
            "> which", f"{JANE} is not subscribed to any package.", "",
            "> hello", NOT_A_COMMAND, "",
            "> I would like", NOT_A_COMMAND, "",
            "> to know", NOT_A_COMMAND, "",
            "> more about", NOT_A_COMMAND, "",
            "> this", NOT_A_COMMAND, "Stopped here: 5 lines were not commands.",
        ])

    async def test_quit_words_stop(self):
        """quit, thanks and a -- signature line stop the reading."""
        for day, word in enumerate(("quit", "thanks", "Thanks!", "--", "-- ")):
            # A day each: five replies in a day would reach the reply cap.
            lines = await self.reply_lines(f"which\n{word}\nwho foo\n", now=NOW + day * DAY)
            self.assertEqual(lines, [
                "> which", f"{JANE} is not subscribed to any package.", "",
                f"> {word.strip()}", "Stopping here, as asked.",
            ], word)

    async def test_no_command_no_reply(self):
        """A mail without any command gets no reply at all."""
        outcome, reply, _ = await self.control("hello\nthanks", subject="hi")
        self.assertIsNone(reply)
        self.assertEqual((outcome.action, outcome.detail), ("ignored", "no command in the mail"))

    async def test_no_plain_text(self):
        """A mail without a text/plain part is told to send plain text."""
        lines = await self.reply_lines("<p>which</p>", subject="hello",
                                       content_type="text/html")
        self.assertEqual(lines, [
            "This mail has no text/plain part: send your commands as plain text."])

    async def test_no_plain_text_subject_still_runs(self):
        """The Subject of an HTML-only mail is still a command."""
        lines = await self.reply_lines("<p>hi</p>", subject="which", content_type="text/html")
        self.assertEqual(lines, [
            "> which", f"{JANE} is not subscribed to any package.", "",
            "This mail has no text/plain part: send your commands as plain text."])

    async def test_charset_decoded(self):
        """The body is decoded with its charset before it is echoed."""
        lines = await self.reply_lines("caf\xe9\nwhich".encode("iso-8859-1"),
                                       content_type="text/plain; charset=iso-8859-1")
        self.assertEqual(lines, ["> caf\xe9", NOT_A_COMMAND, "",
                                 "> which", f"{JANE} is not subscribed to any package."])


class ReplyMixin(ControlMixin):
    async def test_reply_headers(self):
        """The reply goes to the sender, threads, and carries X-Loop."""
        _, reply, _ = await self.control(
            "which", subject="Re: which", sender=f"Jane Doe <{JANE}>",
            headers=[("References", "<a@x> <b@x>")])
        msg = reply.msg
        self.assertEqual(reply.recipients, [JANE])
        self.assertEqual(reply.senders, [""])
        self.assertEqual(str(msg["To"]), JANE)
        self.assertEqual(str(msg["From"]), CONTROL)
        self.assertIsNone(msg["Cc"])
        self.assertEqual(str(msg["Subject"]), "Re: which")
        self.assertEqual(str(msg["In-Reply-To"]), "<m1@example.org>")
        self.assertEqual(str(msg["References"]), "<a@x> <b@x> <m1@example.org>")
        self.assertEqual(str(msg["X-Loop"]), CONTROL)
        self.assertEqual(str(msg["Auto-Submitted"]), "auto-replied")

    async def test_no_subject(self):
        """A mail without Subject gets a reply with a stand-in subject."""
        _, reply, _ = await self.control("which", subject=None, msgid=None)
        self.assertEqual(reply.subject, "Re: (no subject)")
        self.assertIsNone(reply.msg["In-Reply-To"])

    async def test_no_copies_of_the_reply(self):
        """The reply goes to the sender only: the others get a CONFIRM mail naming the sender."""
        _, reply, confirmations = await self.control(
            f"subscribe foo {TOM}\nsubscribe bar\nsubscribe bar bob@example.net")
        self.assertEqual(sorted(confirmations), ["bob@example.net", JANE, TOM])
        self.assertEqual(reply.recipients, [JANE])
        self.assertIsNone(reply.msg["Cc"])
        self.assertEqual(confirmations[TOM].lines[0],
                         f"{JANE} asked the package tracker at tracker.example.org to:")

    async def test_everything_in_one_transaction(self):
        """A failure in the middle leaves no reply, no key and no change behind."""
        def broken(session, cmd):
            raise RuntimeError("boom")
            yield

        self.patch(commands, "_COMMANDS", {**commands._COMMANDS, "who": broken})
        raw = make_mail("keyword = vcs\nsubscribe foo\nwho foo")
        with self.assertRaises(RuntimeError):
            await self.store.run(handle_control, make_incoming(raw),
                                 Context(self.config, None, 1.7e9))
        self.assertEqual(await self.outbox(), [])
        self.assertEqual(len(await self.store.run(default_keywords, JANE)), 8)


class DropMixin(ControlMixin):
    async def assertDropped(self, reason, raw=None, **kwargs):
        if raw is None:
            raw = make_mail("subscribe foo\nwhich", subject="which",
                            headers=kwargs.pop("headers", ()))
        outcome = await self.run_mail(raw, **kwargs)
        self.assertEqual((outcome.action, outcome.detail), ("dropped", reason))
        self.assertEqual(await self.outbox(), [])
        self.assertEqual(await self.store.run(delivery_rows), [])

    async def test_own_loop(self):
        """Mail carrying X-Loop: control@FQDN is dropped."""
        await self.assertDropped(f"X-Loop: {CONTROL}",
                                 headers=[("X-Loop", "other@x"), ("X-Loop", CONTROL.upper())])

    async def test_auto_submitted(self):
        """Auto-Submitted other than no is dropped (RFC 3834)."""
        await self.assertDropped("Auto-Submitted: auto-replied",
                                 headers=[("Auto-Submitted", "auto-replied; owner=x")])
        await self.assertDropped("Auto-Submitted: auto-generated",
                                 headers=[("Auto-Submitted", "Auto-Generated")])

    async def test_auto_submitted_no(self):
        """Auto-Submitted: no is a person's mail and is answered."""
        lines = await self.reply_lines("which", headers=[("Auto-Submitted", "no")])
        self.assertEqual(lines, ["> which", f"{JANE} is not subscribed to any package."])

    async def test_precedence(self):
        """Precedence bulk, junk and list are dropped."""
        for value in ("bulk", "Junk", "list"):
            await self.assertDropped(f"Precedence: {value.lower()}",
                                     headers=[("Precedence", value)])

    async def test_null_envelope_sender(self):
        """Mail with the null envelope sender (a bounce) is dropped."""
        await self.assertDropped("null envelope sender", envelope_from="")

    async def test_no_sender(self):
        """Mail without a usable From: or envelope sender is dropped."""
        await self.assertDropped("no usable sender address",
                                 raw=make_mail("which", sender="not an address"))
        await self.assertDropped("no usable sender address", raw=make_mail("which", sender=None))

    async def test_envelope_sender_fallback(self):
        """Without a valid From:, the reply goes to the envelope sender."""
        outcome = await self.run_mail(make_mail("which", sender="broken"), envelope_from=TOM)
        self.assertEqual(outcome.action, "replied")
        [reply] = await self.outbox()
        self.assertEqual(reply.recipients, [TOM])

    async def test_own_domain(self):
        """Mail from an address of the tracker itself is dropped."""
        await self.assertDropped("mail from the tracker's own domain",
                                 raw=make_mail("which", sender="dispatch@tracker.example.org"))


class BadInputMixin(ControlMixin):
    async def test_huge_body_of_prose(self):
        """A 10,000-line body stops after 5 non-command lines."""
        lines = await self.reply_lines("which\n" + "blah blah\n" * 10_000)
        self.assertEqual(lines, [
            "> which", f"{JANE} is not subscribed to any package.", "",
        ] + ["> blah blah", NOT_A_COMMAND, ""] * 4 + [
            "> blah blah", NOT_A_COMMAND, "Stopped here: 5 lines were not commands.",
        ])

    async def test_huge_body_of_commands(self):
        """10,000 command lines: at most 100 are read, the rest is refused with a line."""
        body = "\n".join(f"who pkg{i}" for i in range(10_000))
        lines = await self.reply_lines(body)
        self.assertEqual(lines[-1], "Stopped here: one mail may carry at most 100 commands.")
        self.assertEqual(sum(1 for line in lines if line.startswith("> ")), 100)

    async def test_huge_body_of_quotes(self):
        """10,000 quoted lines are skipped and the commands after them still run."""
        lines = await self.reply_lines("> quoted\n" * 10_000 + "which\n")
        self.assertEqual(lines, ["> which", f"{JANE} is not subscribed to any package."])

    async def test_nul_bytes(self):
        """NUL bytes are shown as ? and never make a valid argument."""
        lines = await self.reply_lines(b"subscribe foo\x00\nwhich\x00\n\x00\nwho\x00 foo")
        self.assertEqual(lines, [
            "> subscribe foo?", 'Error: "foo?" is not a valid package name.', "",
            "> which?", NOT_A_COMMAND, "",
            "> ?", NOT_A_COMMAND, "",
            "> who? foo", NOT_A_COMMAND,
        ])

    async def test_undecodable_charset(self):
        """A body in an unknown charset is read as UTF-8 and bad bytes become U+FFFD."""
        lines = await self.reply_lines(b"which\n\xff\xfe\n",
                                       content_type="text/plain; charset=x-martian")
        self.assertEqual(lines, ["> which", f"{JANE} is not subscribed to any package.", "",
                                 "> \ufffd\ufffd", NOT_A_COMMAND])

    async def test_broken_base64(self):
        """A body with broken base64 does not crash the bot."""
        outcome = await self.run_mail(make_mail(
            "d2hpY2g=!!!\n***", headers=[("Content-Transfer-Encoding", "base64")],
            content_type="text/plain"))
        self.assertIn(outcome.action, ("replied", "ignored"))

    async def test_header_injection_in_body(self):
        """An EMAIL argument with a newline is two lines; no header is ever added."""
        _, reply, confirmations = await self.control("subscribe foo a@b.c\nBcc: x@y")
        self.assertEqual(reply.lines, [
            "> subscribe foo a@b.c",
            "Needs confirmation: a mail with a key was sent to a@b.c.", "",
            "> Bcc: x@y", NOT_A_COMMAND,
        ])
        self.assertIsNone(reply.msg["Bcc"])
        self.assertEqual(reply.recipients, [JANE])
        self.assertEqual(list(confirmations), ["a@b.c"])

    async def test_header_injection_in_subject(self):
        """An encoded newline in the Subject neither splits the command nor adds headers."""
        subject = "=?utf-8?q?subscribe_foo_a@b.c=0D=0ABcc:_x@y?="
        _, reply, confirmations = await self.control("", subject=subject)
        self.assertEqual(reply.lines, ["> subscribe foo a@b.c Bcc: x@y",
                                       "Error: usage: subscribe PACKAGE [EMAIL]"])
        self.assertEqual(reply.subject, "Re: subscribe foo a@b.c Bcc: x@y")
        self.assertIsNone(reply.msg["Bcc"])
        self.assertEqual(reply.recipients, [JANE])
        self.assertEqual(confirmations, {})

    async def test_header_injection_in_email_argument(self):
        """Control characters inside an EMAIL argument make it invalid."""
        lines = await self.reply_lines("subscribe foo a@b.c\x0bBcc:x@y\nsubscribe foo a@b.c\x00x")
        self.assertEqual(lines, [
            "> subscribe foo a@b.c", "Needs confirmation: a mail with a key was sent to a@b.c.",
            "", "> Bcc:x@y", NOT_A_COMMAND, "",
            "> subscribe foo a@b.c?x", 'Error: "a@b.c?x" is not a valid email address.',
        ])

    async def test_long_line(self):
        """An over-long line is not parsed, and is echoed cut short."""
        lines = await self.reply_lines("subscribe foo " + "a" * 5000 + "\nwhich")
        self.assertEqual(lines[0], "> subscribe foo " + "a" * 183 + "...")
        self.assertEqual(lines[1:], ["Line too long to be a command: ignored.", "",
                                     "> which", f"{JANE} is not subscribed to any package."])

    async def test_broken_mime(self):
        """A multipart mail without its boundary gets a defined answer."""
        raw = make_mail("which\n", subject="which",
                        content_type='multipart/mixed; boundary="nope"')
        outcome = await self.run_mail(raw)
        self.assertEqual(outcome.action, "replied")


ReadingTests, ReadingSQLiteFileTests, ReadingPostgresTests = backends(ReadingMixin, "Reading")
ReplyTests, ReplySQLiteFileTests, ReplyPostgresTests = backends(ReplyMixin, "Reply")
DropTests, DropSQLiteFileTests, DropPostgresTests = backends(DropMixin, "Drop")
BadInputTests, BadInputSQLiteFileTests, BadInputPostgresTests = backends(
    BadInputMixin, "BadInput")
