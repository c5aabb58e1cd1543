"""
Tests for L{trackermail.bounces.spamtext}.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.support.corpus import corpus_labels
from trackermail.bounces.spamtext import is_spam_rejection

_EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "300"))
hsettings = settings(max_examples=_EXAMPLES, deadline=None, database=None)

# Refusals of our mail for what it is, as real MTAs word them.
CONTENT_REJECTIONS = {
    "gmail security issue": (
        "552-5.7.0 This message was blocked because its content presents a potential\n"
        "552-5.7.0 security issue. Please visit\n"
        "552-5.7.0  https://support.google.com/mail/?p=BlockedMessage to review our\n"
        "552 5.7.0 message content and attachment content guidelines. "
        "d2si1234 - gsmtp"
    ),
    "gmail security issue, second line only": (
        "552-5.7.0 Our system detected an issue with your message. The\n"
        "552-5.7.0 content presents a potential security issue.\n"
        "552 5.7.0 https://support.google.com/mail/?p=BlockedMessage"
    ),
    "gmail unsolicited": (
        "550-5.7.1 [192.0.2.7] Our system has detected that this message is\n"
        "550-5.7.1 likely unsolicited mail. To reduce the amount of spam sent to"
        " Gmail,\n550 5.7.1 this message has been blocked."
    ),
    "postfix folded": (
        "<jane@example.org>: host mx.example.org[192.0.2.1] said: 550 5.7.1"
        " Message\n    rejected as spam by Content Filtering. (in reply to end of"
        " DATA command)"
    ),
    "dsn folded": (
        "Diagnostic-Code: smtp; 554 5.7.1 The message was rejected because it\n"
        " contains prohibited virus or spam content"
    ),
    "high probability": "550 High probability of spam",
    "malware": "554 5.7.1 Message rejected because it contains malware",
    "executable": "550 Executable files are not allowed in compressed files.",
    "exim": (
        "  SMTP error from remote mail server after end of data:\n"
        "  host mx.example.org [192.0.2.1]: 550-Rejected: this message\n"
        "  550 appears to be SPAM (score 12.3)"
    ),
    "sendmail": "<<< 554 5.7.1 Message rejected: infected with Trojan.Gen",
    "spamhaus": (
        "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using"
        " zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.1"
    ),
    "exchange": (
        "Remote Server returned '550 5.7.1 Message rejected as spam by Content"
        " Filtering.'"
    ),
    "dmarc": (
        "550-5.7.26 Unauthenticated email from example.com is not accepted due"
        " to\n550-5.7.26 domain's DMARC policy. Please contact the administrator"
        " of\n550 5.7.26 example.com domain."
    ),
    "yahoo policy": (
        "Diagnostic-Code: smtp; 554 5.7.9 Message not accepted for policy"
        " reasons. See https://postmaster.yahooinc.com/error-codes"
    ),
    "content rejected": "Diagnostic-Code: SMTP; 550 5.7.1 message content rejected",
    "virus found": "smtp;550 5.7.0 Virus found: Eicar-Test-Signature",
    "outbound sender record": "553 5.7.1 Spam message rejected",
    "google groups, no code": (
        "Diagnostic-Code: smtp; Your email to group team@example.com was"
        " rejected due to spam classification. To address this issue:"
    ),
}

# Refusals that are about the recipient: these bounces must count.
RECIPIENT_REJECTIONS = {
    "user unknown": (
        "550 5.1.1 <jane@example.org>: Recipient address rejected: User unknown"
        " in virtual mailbox table"
    ),
    "mailbox full": "552 5.2.2 Mailbox full",
    "over quota": "Diagnostic-Code: smtp; 552 5.2.2 user is over quota",
    "gmail no such user": (
        "550-5.1.1 The email account that you tried to reach does not exist."
        " Please try\n550-5.1.1 double-checking the recipient's email address for"
        " typos or\n550-5.1.1 unnecessary spaces. Learn more at\n"
        "550 5.1.1  https://support.google.com/mail/?p=NoSuchUser"
    ),
    "spam in the address": (
        "550 5.1.1 <spam@example.org>: Recipient address rejected: User unknown"
    ),
    "virus in a bare address": (
        "550 5.1.1 nospam.filter@antivirus.example... User unknown"
    ),
    "spam in a host name": (
        "550 5.4.4 mx.antispam-gateway.example: host not found"
    ),
    "spam in a URL": (
        "550 No such user here, see https://example.org/spam-and-virus-faq"
    ),
    "address status wins": "550 5.1.1 user unknown (spam filter bypassed)",
    "mailbox status wins": "552 5.2.2 mailbox full; spam folder too",
    "relay denied": "554 5.7.1 <jane@example.org>: Relay access denied",
    "disabled": "550 5.2.1 The email account that you tried to reach is disabled.",
    "temporary spam suspicion": "451 4.7.1 Greylisted; suspected spam, try later",
    "temporary rate limit": (
        "421-4.7.0 [192.0.2.1] Our system has detected an unusual rate of\n"
        "421-4.7.0 unsolicited mail originating from your IP address."
    ),
    "no reply code": "I think this message is spam, and it carries a virus.",
    "code on another line": "550 Mailbox unavailable\nSubject: cheap spam pills",
    "after a blank line": "550 Requested action not taken\n\n    spam talk",
    "longer number": "Queued 1550 bytes; 5550 spam messages",
    "no reply": "",
    "bare diagnostic about the user": "Diagnostic-Code: smtp; User unknown",
    "temporary diagnostic": "Diagnostic-Code: smtp; 451 4.7.1 spam, try later",
    "not a diagnostic": "X-Diagnostic: smtp; spam",
}


class IsSpamRejectionTests(SynchronousTestCase):
    """
    Tests for L{is_spam_rejection}.
    """

    def test_content_rejections(self) -> None:
        """
        55x refusals of our mail as spam, malware, viruses, executables, or by
        sender reputation or authentication are recognised.
        """
        for name, text in CONTENT_REJECTIONS.items():
            self.assertTrue(is_spam_rejection(text), name)

    def test_recipient_rejections(self) -> None:
        """
        Refusals about the recipient, temporary failures and text that is not
        an SMTP reply are not.
        """
        for name, text in RECIPIENT_REJECTIONS.items():
            self.assertFalse(is_spam_rejection(text), name)

    def test_in_a_whole_report(self) -> None:
        """
        The rejection is found inside the human part of a bounce, with CRLF
        line ends, among other lines.
        """
        report = (
            "This is the mail system at host tracker.example.\r\n\r\n"
            "I'm sorry to have to inform you that your message could not\r\n"
            "be delivered to one or more recipients.\r\n\r\n"
            + CONTENT_REJECTIONS["postfix folded"].replace("\n", "\r\n")
            + "\r\n"
        )
        self.assertTrue(is_spam_rejection(report))

    def test_bytes(self) -> None:
        """
        Bytes are read as UTF-8, undecodable bytes and all.
        """
        self.assertTrue(is_spam_rejection(b"\xff\xfe 550 5.7.1 spam detected"))
        self.assertFalse(is_spam_rejection(b"\xff 550 5.1.1 user unknown"))

    def test_not_text(self) -> None:
        """
        Anything that is not text is not a rejection.
        """
        for value in (None, 42, ["550 spam"]):
            self.assertFalse(is_spam_rejection(value))

    def test_huge_input(self) -> None:
        """
        Megabytes of reply codes, addresses or long tokens give an answer
        (the work per reply is bounded).
        """
        self.assertFalse(is_spam_rejection("550 " * 300_000))
        self.assertFalse(is_spam_rejection("550 " + "a@" * 500_000))
        self.assertFalse(is_spam_rejection("550 " + "a" * 2_000_000 + " spam"))
        self.assertFalse(is_spam_rejection("550-x\n" * 200_000))
        self.assertTrue(is_spam_rejection("550 spam" + "x" * 2_000_000))

    @hsettings
    @given(st.text(max_size=2000))
    def test_fuzz_text(self, text) -> None:
        """
        Arbitrary text gives a boolean and never an exception.
        """
        self.assertIsInstance(is_spam_rejection(text), bool)

    @hsettings
    @given(st.binary(max_size=2000))
    def test_fuzz_bytes(self, data) -> None:
        """
        Arbitrary bytes give a boolean and never an exception.
        """
        self.assertIsInstance(is_spam_rejection(data), bool)

    @hsettings
    @given(
        st.lists(
            st.sampled_from(
                ["550", "552-", "5.7.1", "5.1.1", " ", "-", "\n", "\r\n", "  ",
                 "spam", "virus", "<", ">", "@", ".", "x", "https://", ";"]
            ),
            max_size=60,
        )
    )
    def test_fuzz_fragments(self, fragments) -> None:
        """
        Text assembled from the pieces the recogniser looks for gives a
        boolean and never an exception.
        """
        self.assertIsInstance(is_spam_rejection("".join(fragments)), bool)

    @hsettings
    @given(st.text(st.characters(blacklist_characters="5"), max_size=500))
    def test_no_code_no_rejection(self, text) -> None:
        """
        Without a 55x reply code, no text counts as a rejection, whatever it
        says about spam.
        """
        self.assertFalse(is_spam_rejection(text + " spam virus malware"))

    @hsettings
    @given(
        st.text(
            st.characters(
                blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
                blacklist_characters="<>",
            ),
            min_size=1,
            max_size=40,
        ).map(lambda s: f"{s}spam@virus.example"),
        st.sampled_from(["550 5.1.1", "550", "553", "554 5.4.4"]),
    )
    def test_address_words_ignored(self, address, code) -> None:
        """
        An unknown recipient is counted whatever words its address contains,
        bracketed or bare.
        """
        self.assertFalse(
            is_spam_rejection(f"{code} <{address}>: Recipient address rejected:"
                              f" User unknown")
        )
        self.assertFalse(is_spam_rejection(f"{code} {address}... User unknown"))

    @hsettings
    @given(
        st.sampled_from(
            sorted(v for v in CONTENT_REJECTIONS.values() if "Diagnostic" not in v)
        ),
        st.sampled_from(["", "Diagnostic-Code: smtp; ", "host mx[192.0.2.1] said: ",
                         "<<< ", "(reason: "]),
        st.text(max_size=200).map(lambda s: s.replace("5", "")),
    )
    def test_context_kept(self, rejection, prefix, noise) -> None:
        """
        A content rejection is still recognised behind the prefixes MTAs put
        before the reply, and after unrelated lines.
        """
        self.assertTrue(is_spam_rejection(f"{noise}\n\n{prefix}{rejection}"))


class CorpusTests(SynchronousTestCase):
    """
    L{is_spam_rejection} on the labelled bounce corpus, when it is present.
    """

    # Reasons that are about the recipient's address or mailbox: flagging any
    # of these would keep a dead address subscribed.
    RECIPIENT_REASONS = {
        "userunknown", "mailboxfull", "hostunknown", "hasmoved", "suspend",
        "notaccept", "expired", "systemfull", "exceedlimit", "mesgtoobig",
    }

    def setUp(self) -> None:
        self.cases = [
            (label["path"], {r.get("reason") for r in label["recipients"]})
            for label in corpus_labels()
        ]

    def test_no_recipient_failure_ignored(self) -> None:
        """
        No bounce about the recipient's address or mailbox is taken for a
        content rejection, even scanning the whole message.
        """
        flagged = [
            path.name
            for path, reasons in self.cases
            if reasons
            and reasons <= self.RECIPIENT_REASONS
            and is_spam_rejection(path.read_bytes())
        ]
        self.assertEqual(flagged, [])

    def test_spam_and_virus_recognised(self) -> None:
        """
        Most bounces labelled as spam or virus rejections are recognised (the
        rest carry no 55x code, or only a quoted-printable one).
        """
        relevant = [
            path
            for path, reasons in self.cases
            if reasons & {"spamdetected", "virusdetected"}
        ]
        found = [p for p in relevant if is_spam_rejection(p.read_bytes())]
        self.assertGreaterEqual(len(found) * 4, len(relevant) * 3)
