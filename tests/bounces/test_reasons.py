"""
Tests for L{trackermail.bounces.reasons}: the bounce reason of a failed
recipient, the reason groups, and the reason of a single SMTP reply.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from trackermail.bounces.reasons import (
    GONE,
    OURS,
    PERSISTENT_SOFT,
    REASONS,
    classify,
    is_spam_rejection,
    reason_group,
    reply_reason,
    smtp_command,
)

_EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "200"))
hsettings = settings(max_examples=_EXAMPLES, deadline=None, database=None)


class StatusCodeTests(SynchronousTestCase):
    """
    A status code alone names the reason RFC 3463 gives it.
    """

    def test_status_codes(self):
        """Each precise status code stands for its reason, in both classes where it can."""
        for status, reason in [
            ("5.1.1", "userunknown"), ("5.1.2", "hostunknown"), ("5.1.6", "hasmoved"),
            ("5.1.8", "rejected"), ("5.1.10", "userunknown"), ("5.2.1", "filtered"),
            ("4.2.1", "suspend"), ("5.2.2", "mailboxfull"), ("4.2.2", "mailboxfull"),
            ("5.2.3", "exceedlimit"), ("5.3.1", "systemfull"), ("5.3.2", "notaccept"),
            ("5.3.4", "mesgtoobig"), ("5.4.0", "networkerror"), ("4.4.1", "expired"),
            ("4.4.7", "expired"), ("4.4.5", "toomanyconn"), ("5.6.1", "contenterror"),
            ("5.7.1", "blocked"), ("5.7.9", "securityerror"), ("5.7.13", "suspend"),
            ("5.7.25", "requireptr"), ("5.7.26", "authfailure"), ("5.7.27", "rejected"),
        ]:
            self.assertEqual(classify(status, ""), reason, status)

    def test_class_fallbacks(self):
        """Unlisted x.6 and x.7 codes fall back to their class's reason."""
        self.assertEqual(classify("5.6.99", "550 no"), "contenterror")
        self.assertEqual(classify("4.7.99", "450 no"), "securityerror")

    def test_vague_status(self):
        """
        A vague status with unreadable text is "onhold"; with no text at
        all "undefined"; a delayed one has "expired".
        """
        self.assertEqual(classify("5.0.0", "550 Requested action aborted (zork)"), "onhold")
        self.assertEqual(classify("5.0.0", ""), "undefined")
        self.assertEqual(classify(None, None), "undefined")
        self.assertEqual(classify("4.0.0", "", action="delayed"), "expired")

    def test_success_is_not_a_reason(self):
        """A success status gives no failure reason."""
        self.assertEqual(classify("2.1.5", "250 2.1.5 Ok"), "undefined")

    def test_text_refines_vague_status(self):
        """A 5.0.0 with a recognised text takes the text's reason."""
        self.assertEqual(classify("5.0.0", "550 Mailbox quota exceeded"), "mailboxfull")
        self.assertEqual(classify("4.0.0", "DNS Error: DNS type 'mx' lookup of example.invalid"
                                           " responded with code NXDOMAIN"), "networkerror")

    def test_status_found_in_text(self):
        """Without a status, the first failure status in the text is used."""
        self.assertEqual(classify(None, "250 2.1.5 Ok ... 552 5.2.2 over the limit"),
                         "mailboxfull")


class TextTests(SynchronousTestCase):
    """
    Diagnostics as MTAs word them, one or more per reason.
    """

    CASES = [
        # (status, diagnostic, expected)
        ("5.1.1", "smtp; 550 5.1.1 <jane@example.org>: Recipient address rejected: User unknown"
                  " in virtual mailbox table", "userunknown"),
        (None, "The recipient name is not recognized", "userunknown"),
        ("5.4.4", "Host or domain name not found. Name service error for name=example.invalid"
                  " type=A: Host not found", "hostunknown"),
        (None, "Sorry, I couldn't find any host named example.invalid. (#5.1.2)",
         "hostunknown"),
        ("5.0.0", "552 <jane@example.org>... Mailbox is full", "mailboxfull"),
        (None, "Sorry, your message to jane@example.org cannot be delivered. This account is"
               " over quota.", "mailboxfull"),
        (None, "This account has been disabled or discontinued [#102].", "suspend"),
        ("5.2.1", "550-5.2.1 The email account that you tried to reach is disabled.",
         "suspend"),
        ("5.1.6", "550 5.1.6 recipient no longer on server: jane@example.org", "hasmoved"),
        ("5.0.0", "550 Host does not accept mail", "notaccept"),
        ("4.0.0", "The domain example.org doesn't receive email according to the"
                  " administrator: returned Null MX", "notaccept"),
        ("5.1.1", "550 5.1.1 RCP-P2 Refused due to recipient preferences", "filtered"),
        ("5.1.8", "553 5.1.8 <bounces@tracker.example.org>... Domain of sender address"
                  " bounces@tracker.example.org does not exist", "rejected"),
        ("5.7.1", "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using"
                  " zen.spamhaus.org", "blocked"),
        ("5.7.1", "550 5.7.1 Message content rejected, UBE, id=1234", "spamdetected"),
        ("5.0.0", "550 Virus Detected; Content Rejected", "virusdetected"),
        ("5.7.0", "552-5.7.0 This message was blocked because its content presents a"
                  " potential security issue.", "policyviolation"),
        ("5.7.9", "554 5.7.9 Message not accepted for policy reasons.", "policyviolation"),
        ("5.7.26", "550-5.7.26 Unauthenticated email from example.com is not accepted due"
                   " to domain's DMARC policy.", "authfailure"),
        ("5.7.1", "550 5.7.1 RESOLVER.RST.AuthRequired; authentication required",
         "securityerror"),
        ("5.5.0", "550 domain [tracker.example.org] mismatches client ip 192.0.2.1.",
         "requireptr"),
        ("5.7.1", "550-5.7.1 [192.0.2.1] Our system has detected that this message is likely"
                  " suspicious due to the very low reputation of the sending IP address.",
         "badreputation"),
        ("5.7.1", "554 5.7.1 <jane@example.org>: Relay access denied", "norelaying"),
        ("4.0.0", "421 Too many concurrent SMTP connections from this IP", "toomanyconn"),
        ("4.7.1", "451 4.7.1 <mx.example.org[192.0.2.2]>: Client host rejected: Please try"
                  " again slower", "speeding"),
        ("4.4.7", "554 4.4.7 Message expired: unable to deliver in 840 minutes.",
         "expired"),
        (None, "Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)",
         "networkerror"),
        ("5.4.14", "554 5.4.14 Hop count exceeded - possible mail loop", "networkerror"),
        ("4.3.0", "451 4.3.0 Error: queue file write error", "systemerror"),
        ("4.0.0", "452 Insufficient disk space; try again later", "systemfull"),
        ("5.0.0", "x-unix; procmail: Error while writing to \"/var/mail/jane\"",
         "mailererror"),
        ("5.3.4", "552 5.3.4 Error: message file too big", "mesgtoobig"),
        ("5.2.3", "552 5.2.3 Message size exceeds fixed maximum message size", "exceedlimit"),
        ("5.6.1", "500 5.6.1 Message content rejected", "contenterror"),
        ("5.0.0", "503 Improper sequence of commands", "syntaxerror"),
        ("5.7.1", "550-5.7.1 Messages with multiple addresses in From: header are not"
                  " accepted.", "notcompliantrfc"),
    ]

    def test_texts(self):
        """Each diagnostic gets the reason its words name."""
        for status, text, expected in self.CASES:
            self.assertEqual(classify(status, text), expected, text)

    def test_every_reason_covered(self):
        """The cases above name every failure reason but the two catch-alls."""
        covered = {expected for _, _, expected in self.CASES}
        self.assertEqual(set(REASONS) - covered, {"onhold", "undefined"})

    def test_addresses_are_not_reasons(self):
        """The words of an address do not make a reason."""
        self.assertEqual(
            classify("5.1.1", "550 5.1.1 <spam-virus@relay-denied.example>: User unknown"),
            "userunknown")

    def test_command_decides_unknown_users(self):
        """
        "User unknown" at RCPT time is an unknown user; after DATA it is a
        filter's refusal; at MAIL FROM it is about our sender.
        """
        text = "550 Unknown user jane@example.org"
        self.assertEqual(classify(None, text, command="RCPT"), "userunknown")
        self.assertEqual(classify(None, text, command="DATA"), "filtered")
        self.assertEqual(
            classify("5.1.0", "553 5.1.0 <bounces@tracker.example.org>: sender does not exist",
                     command="MAIL"), "rejected")

    def test_spam_only_after_data(self):
        """A spam verdict is believed only once the message was sent."""
        text = "550 5.7.1 Message rejected as spam"
        self.assertEqual(classify("5.7.1", text, command="DATA"), "spamdetected")
        self.assertEqual(classify("5.7.1", text, command="RCPT"), "blocked")

    def test_refused_greeting(self):
        """A refusal of the connection or of HELO, for no stated reason, is "blocked"."""
        self.assertEqual(
            classify("4.0.0", "host mx.example.org[192.0.2.1] refused to talk to me: 421"
                              " Service refused, please try later"), "blocked")
        self.assertEqual(classify(None, "554 Go away", command="EHLO"), "blocked")

    def test_mailer_types(self):
        """A mailer's own diagnostic type is a mailer error, unless it quotes a reply."""
        self.assertEqual(classify("5.0.0", "127", diagnostic_type="X-Unix"), "mailererror")
        self.assertEqual(
            classify("5.0.0", "X-Postfix; host mx.example.org[192.0.2.1] said: 550 User"
                              " unknown (in reply to RCPT TO command)"), "userunknown")

    @hsettings
    @given(st.one_of(st.none(), st.text(max_size=30)), st.text(max_size=600),
           st.one_of(st.none(), st.sampled_from(["failed", "delayed", "x"])))
    def test_any_input(self, status, text, action):
        """Any status, text and action give one of the reasons, never an exception."""
        self.assertIn(classify(status, text, action=action), REASONS)


class ProviderTests(SynchronousTestCase):
    """
    Error names and provider codes decide, whatever the words around them.
    """

    def test_codes(self):
        """Exchange names, Gmail states and Orange, Cox and Spectrum codes give their reason."""
        for status, text, reason in [
            ("5.1.1", "#550 5.1.1 RESOLVER.ADR.RecipNotFound; not found ##", "userunknown"),
            ("5.2.3", "550 5.2.3 RESOLVER.RST.RecipSizeLimit; message too large for this"
                      " recipient", "mesgtoobig"),
            ("4.4.7", "550 4.4.7 QUEUE.Expired; message expired", "expired"),
            (None, "The error that the other server returned was: 554 554 5.7.0 Header error"
                   " (state 18).", "filtered"),
            (None, "The error that the other server returned was: 550 550 5.2.2"
                   " <jane@example.org>... Mailbox Full (state 14).", "mailboxfull"),
            ("5.2.0", "550 5.2.0 Mail rejete. Mail rejected. ofr_506 [506]", "spamdetected"),
            ("5.1.1", "550 5.1.1 Adresse d au moins un destinataire invalide. Invalid recipient."
                      " LPN416", "userunknown"),
            ("4.0.0", "421 4.2.0 Service refuse. Veuillez essayer plus tard. OFR005_505 [505]",
             "systemerror"),
            ("5.5.0", "550 5.5.0 Adresse destinataire invalide. LPN007_416", "userunknown"),
            ("5.1.0", "550 5.1.0 <bounces@tracker.example.org> sender rejected. AUP#CDRBL",
             "blocked"),
            ("5.1.0", "550 5.1.0 sender rejected. AUP#In-1310", "toomanyconn"),
            ("5.7.509", "550 5.7.509 Access denied, sending domain example.org does not pass"
                        " DMARC verification", "authfailure"),
            ("4.7.650", "451 4.7.650 The mail server [192.0.2.5] has been temporarily rate"
                        " limited due to IP reputation.", "badreputation"),
        ]:
            self.assertEqual(classify(status, text), reason, text)


class CommandTests(SynchronousTestCase):
    """
    The SMTP command a diagnostic says was refused.
    """

    def test_commands(self):
        """Postfix, Exim, Sendmail, qmail and DragonFly wordings are understood."""
        for text, command in [
            ("550 5.1.1 User unknown (in reply to RCPT TO command)", "RCPT"),
            ("553 sender rejected (in reply to MAIL FROM command)", "MAIL"),
            ("554 rejected (in reply to end of DATA command)", "DATA"),
            ("SMTP error from remote mail server after RCPT TO:<a@b>: 550 no", "RCPT"),
            ("SMTP error from remote mail server after initial connection: 554", "CONN"),
            (">>> MAIL From:<a@b> SIZE=800\n<<< 553 5.1.8 no", "MAIL"),
            ("... while talking to mx.example.org.:\n<<< 554 go away", "CONN"),
            ("192.0.2.1 does not like recipient. Remote host said: 550 no", "RCPT"),
            ("Connected to 192.0.2.1 but my name was rejected.", "HELO"),
            ("mx.example.org [192.0.2.25] did not like our MAIL FROM: 553 no", "MAIL"),
            ("550 5.1.1 User unknown", None),
            ("", None),
        ]:
            self.assertEqual(smtp_command(text), command, text)


class ReplyTests(SynchronousTestCase):
    """
    A single SMTP reply from a smarthost, read like a DSN that failed at
    RCPT time.
    """

    def test_replies(self):
        """Reply code and text give the reason of the recipient they refuse."""
        for code, text, reason in [
            (550, "5.1.1 <jane@example.org>: Recipient address rejected: User unknown",
             "userunknown"),
            (550, "No such user here", "userunknown"),
            ("552", "5.2.2 Mailbox full", "mailboxfull"),
            (554, "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using"
                  " bl.spamcop.net", "blocked"),
            (550, "5.7.1 <jane@example.org>: Relay access denied", "norelaying"),
            (450, "4.7.1 Client host rejected: cannot find your hostname", "requireptr"),
            (451, "Temporary local problem - please try later", "systemerror"),
            (503, "5.5.1 Bad sequence of commands", "syntaxerror"),
            (550, "", "onhold"),
            (None, None, "undefined"),
        ]:
            self.assertEqual(reply_reason(code, text), reason, (code, text))

    def test_command(self):
        """The reply may be read as the answer to another command."""
        self.assertEqual(reply_reason(550, "Unknown user", command="DATA"), "filtered")
        self.assertEqual(reply_reason(550, "Access denied", command="MAIL"), "rejected")

    def test_spam_refusal_at_data(self):
        """A content refusal is read at the command given."""
        self.assertEqual(reply_reason(554, "5.7.1 Message rejected as spam", command="DATA"),
                         "spamdetected")


class GroupTests(SynchronousTestCase):
    """
    Reason groups, for the bounce policy.
    """

    def test_every_reason_has_a_group(self):
        """Each reason falls in exactly one group."""
        groups = {reason: reason_group(reason) for reason in REASONS}
        self.assertEqual(set(groups.values()), {"ours", "gone", "persistent-soft", "other"})
        self.assertEqual(OURS & GONE, frozenset())
        self.assertEqual(OURS & PERSISTENT_SOFT, frozenset())
        self.assertEqual(GONE & PERSISTENT_SOFT, frozenset())

    def test_ours(self):
        """Refusals of our mail or our server are ours."""
        for reason in ("blocked", "badreputation", "spamdetected", "virusdetected",
                       "requireptr", "authfailure", "securityerror", "norelaying",
                       "toomanyconn", "speeding", "rejected"):
            self.assertEqual(reason_group(reason), "ours", reason)

    def test_gone(self):
        """An address that no longer exists is gone."""
        for reason in ("userunknown", "hostunknown", "hasmoved", "notaccept", "suspend"):
            self.assertEqual(reason_group(reason), "gone", reason)

    def test_persistent_soft(self):
        """A full mailbox, or a bounce that says nothing readable, is persistent-soft."""
        for reason in ("mailboxfull", "exceedlimit", "onhold", "undefined", None):
            self.assertEqual(reason_group(reason), "persistent-soft", reason)

    def test_other(self):
        """Filters, expiry and remote errors are the rest."""
        for reason in ("filtered", "expired", "networkerror", "systemerror", "mailererror"):
            self.assertEqual(reason_group(reason), "other", reason)

    def test_policy_violation(self):
        """A policy refusal is ours when it names the sender or the message."""
        self.assertEqual(reason_group(
            "policyviolation", "552-5.7.0 Our system detected an illegal attachment on your"
                               " message."), "ours")
        self.assertEqual(reason_group(
            "policyviolation", "550 5.7.1 Posting by non-member to a members-only list"),
            "other")


class SpamRejectionTests(SynchronousTestCase):
    """
    L{is_spam_rejection} answers from the reason classifier.
    """

    def test_reasons(self):
        """
        55x refusals whose reason is about the message or its sender count;
        those about the address, the mailbox or relaying do not.
        """
        self.assertTrue(is_spam_rejection(
            "550-5.7.1 [192.0.2.1] Our system has detected that this message is likely"
            " suspicious due to the very low reputation of the sending IP address."))
        self.assertTrue(is_spam_rejection("550 5.7.1 Email rejected per DMARC policy"))
        self.assertFalse(is_spam_rejection("554 5.7.1 <jane@example.org>: Relay access denied"))
        self.assertFalse(is_spam_rejection("550 5.2.1 mailbox disabled, spam folder too"))
        self.assertFalse(is_spam_rejection("451 4.7.1 rejected as spam, try later"))
