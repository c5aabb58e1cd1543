"""
Tests for L{trackermail.bounces.verp}.
"""

from __future__ import annotations

import datetime
import os
import re

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from trackermail.bounces import verp
from trackermail.bounces.verp import (
    InvalidVerp,
    VerpInfo,
    decode,
    decode_local,
    encode,
    is_expired,
)
from trackermail.errors import TrackerError

SECRET = "s3cret-key"
OTHER_SECRET = "another-key"
FQDN = "tracker.example"
DAY = datetime.date(2024, 1, 31)
TOKEN = "k3x7q"

# Random, but with enough examples to find the hostile corner cases; raise
# HYPOTHESIS_EXAMPLES for a long local run.
_EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "300"))
hsettings = settings(max_examples=_EXAMPLES, deadline=None, database=None)

# RFC 5321 dot-atom: what any MTA accepts as a local part without quoting.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_ASCII_LOWER = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"
)

# Characters that break naive VERP codecs, weighted in with all of Unicode
# except controls and lone surrogates (which encode() refuses).
_HOSTILE = "+-=@!%:[]\"' .\\_<>(),;#$&*/?^`{|}~"
_chars = st.one_of(
    st.sampled_from(_HOSTILE),
    st.characters(min_codepoint=0x21, max_codepoint=0x7E),
    st.characters(blacklist_categories=("Cc", "Cs")),
)
_locals = st.text(_chars, min_size=1, max_size=70)
_domains = st.text(
    st.one_of(
        st.sampled_from("-.[]:"),
        st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="@"),
    ),
    min_size=1,
    max_size=70,
)
recipients = st.builds(lambda l, d: f"{l}@{d}", _locals, _domains)
# Ordinary addresses, short enough for the readable form: at worst
# 1 + 4*3 + 1 + 8 + 3 + 4 + 4 = 33 encoded octets, the 33 left after the
# 31 of "bounces+DATETOKEN-TAG-".
plain_recipients = st.from_regex(
    r"[a-z0-9][a-z0-9._+-]{0,4}@[a-z0-9]{1,8}(-[a-z0-9]{1,4})?\.(org|net|de)",
    fullmatch=True,
)
email_ids = st.integers(min_value=0, max_value=2**63 - 1)
days = st.dates()


def _local(address: str) -> str:
    return address.rpartition("@")[0]


def _fold(text: str) -> str:
    return text.translate(_ASCII_LOWER)


class EncodeTests(SynchronousTestCase):
    """
    Tests for L{encode}.
    """

    def test_pinned_format(self) -> None:
        """
        The address format and its tag stay stable, so envelope senders of
        mail already sent still decode after an upgrade.
        """
        self.assertEqual(
            encode("jane+debian@example.org", DAY, SECRET, FQDN, token=TOKEN),
            "bounces+20240131k3x7q-lgqkgurz-jane+2Bdebian=example.org@tracker.example",
        )
        self.assertEqual(
            encode("x" * 60 + "@example.org", DAY, SECRET, FQDN, email_id=4711,
                   token=TOKEN),
            "bounces+20240131k3x7q-epmmxqaq-4711@tracker.example",
        )

    def test_new_token_per_call(self) -> None:
        """
        Without a token, each address is a copy of its own: a fresh token of
        five lowercase base32 characters.
        """
        first = decode(encode("jane@example.org", DAY, SECRET, FQDN), SECRET, FQDN)
        second = decode(encode("jane@example.org", DAY, SECRET, FQDN), SECRET, FQDN)
        self.assertRegex(first.token, r"\A[a-z2-7]{5}\Z")
        self.assertNotEqual(first.copy, second.copy)

    def test_signer_shares_the_token(self) -> None:
        """
        The copies of one fan-out share one token and each names its own
        copy; both forms come out of one signer.
        """
        sign = verp.signer(DAY, SECRET, FQDN)
        readable = decode(sign("jane@example.org"), SECRET, FQDN)
        compact = decode(sign("x" * 60 + "@example.org", 7), SECRET, FQDN)
        self.assertEqual(readable.token, compact.token)
        self.assertEqual(readable.copy, f"20240131{readable.token}:jane@example.org")
        self.assertEqual(compact.copy, f"20240131{readable.token}:#7")

    def test_bad_token(self) -> None:
        """
        A token that is not five base32 characters is a programming error.
        """
        for token in ("", "k3x7", "k3x7qq", "k3x9q", "K3X7Q", 12345):
            self.assertRaises(ValueError, encode, "a@b.org", DAY, SECRET, FQDN, token=token)

    def test_distro_tracker_escapes(self) -> None:
        """
        The recipient is written as distro-tracker writes it: uppercase C{+XX}
        for C{+ ! % - : @ [ ]}, C{=} before the domain.
        """
        cases = {
            "node42!ann@old.example.com": "node42+21ann=old.example.com",
            "dave+priority@new.example.com": "dave+2Bpriority=new.example.com",
            "u+!%-:@[]@x.org": "u+2B+21+25+2D+3A+40+5B+5D=x.org",
            "tom@old-example.com": "tom=old+2Dexample.com",
        }
        for recipient, expected in cases.items():
            address = encode(recipient, DAY, SECRET, FQDN)
            self.assertEqual(_local(address).split("-", 2)[2], expected)

    def test_escapes_everything_unusual(self) -> None:
        """
        Quotes, blanks, C{=} and non-ASCII characters (as UTF-8 bytes) are
        escaped too, so the local part is a plain dot-atom.
        """
        address = encode('"j o=e"@b\u00fccher.de', DAY, SECRET, FQDN)
        self.assertEqual(
            _local(address).split("-", 2)[2], "+22j+20o+3De+22=b+C3+BCcher.de"
        )
        self.assertTrue(_DOT_ATOM.fullmatch(_local(address)))

    def test_dots_stay_valid(self) -> None:
        """
        Consecutive dots and a final dot are escaped, so the local part is
        still a dot-atom.
        """
        address = encode("a..b.@x.org.", DAY, SECRET, FQDN)
        self.assertEqual(_local(address).split("-", 2)[2], "a.+2Eb.=x.org+2E")
        self.assertTrue(_DOT_ATOM.fullmatch(_local(address)))
        self.assertEqual(decode(address, SECRET, FQDN).email, "a..b.@x.org.")

    def test_readable_at_64_octets(self) -> None:
        """
        A recipient whose local part comes to exactly 64 octets gets the
        readable form.
        """
        recipient = "a" * 21 + "@example.org"
        address = encode(recipient, DAY, SECRET, FQDN, email_id=7)
        self.assertEqual(len(_local(address)), 64)
        self.assertEqual(decode(address, SECRET, FQDN).email, recipient)

    def test_compact_at_65_octets(self) -> None:
        """
        One octet more and the compact form is used, carrying the id.
        """
        recipient = "a" * 22 + "@example.org"
        address = encode(recipient, DAY, SECRET, FQDN, email_id=7, token=TOKEN)
        self.assertEqual(address.partition("@")[0].split("-")[2], "7")
        self.assertEqual(decode(address, SECRET, FQDN), VerpInfo(DAY, email_id=7, token=TOKEN))

    def test_escapes_count_as_three_octets(self) -> None:
        """
        The limit counts the encoded form: a C{+} costs three octets.
        """
        fits = "a" * 18 + "+@example.org"  # 31 + 18 + 3 + 12 = 64
        self.assertEqual(len(_local(encode(fits, DAY, SECRET, FQDN))), 64)
        too_long = "a" * 19 + "+@example.org"
        self.assertRaises(ValueError, encode, too_long, DAY, SECRET, FQDN)

    def test_too_long_without_id(self) -> None:
        """
        A recipient too long for the readable form, and no id: ValueError.
        """
        self.assertRaises(
            ValueError, encode, "a" * 22 + "@example.org", DAY, SECRET, FQDN
        )

    def test_compact_longest_id(self) -> None:
        """
        The compact form stays far within 64 octets even for the largest id.
        """
        address = encode("a" * 300 + "@b.org", DAY, SECRET, FQDN, 2**63 - 1)
        self.assertLessEqual(len(_local(address)), 50)
        self.assertEqual(decode(address, SECRET, FQDN).email_id, 2**63 - 1)

    def test_unencodable_recipient(self) -> None:
        """
        A recipient with control characters, lone surrogates, no C{@} or an
        empty side cannot be written out: ValueError, or the compact form when
        the id is given.
        """
        for bad in [
            "a\r\nRCPT TO:<victim@example.org>@x.org",
            "a\x00b@x.org",
            "a\x85b@x.org",
            "a\ud800@x.org",
            "postmaster",
            "@x.org",
            "a@",
            "",
        ]:
            self.assertRaises(ValueError, encode, bad, DAY, SECRET, FQDN)
            address = encode(bad, DAY, SECRET, FQDN, email_id=3)
            self.assertEqual(decode(address, SECRET, FQDN).email_id, 3)

    def test_bad_arguments(self) -> None:
        """
        An empty secret, a bad domain, a bad id or a datetime for a date are
        programming errors.
        """
        self.assertRaises(ValueError, encode, "a@b.org", DAY, "", FQDN)
        for fqdn in ["", "a@b", "a b", "a\nb"]:
            self.assertRaises(ValueError, encode, "a@b.org", DAY, SECRET, fqdn)
        self.assertRaises(ValueError, encode, "a@b.org", DAY, SECRET, FQDN, -1)
        self.assertRaises(ValueError, encode, "a@b.org", DAY, SECRET, FQDN, 2**63)
        self.assertRaises(TypeError, encode, "a@b.org", DAY, SECRET, FQDN, True)
        self.assertRaises(TypeError, encode, "a@b.org", DAY, SECRET, FQDN, "1")
        self.assertRaises(
            TypeError,
            encode,
            "a@b.org",
            datetime.datetime(2024, 1, 31),
            SECRET,
            FQDN,
        )
        self.assertRaises(TypeError, encode, b"a@b.org", DAY, SECRET, FQDN)

    @hsettings
    @given(recipients, days, email_ids)
    def test_always_a_dot_atom_within_64(self, recipient, day, email_id) -> None:
        """
        Whatever the recipient, with an id there is always an address, and
        its local part is a dot-atom of at most 64 octets.
        """
        address = encode(recipient, day, SECRET, FQDN, email_id)
        local, _, domain = address.rpartition("@")
        self.assertEqual(domain, FQDN)
        self.assertLessEqual(len(local.encode("utf-8")), verp.MAX_LOCAL_PART)
        self.assertTrue(_DOT_ATOM.fullmatch(local), local)


class DecodeTests(SynchronousTestCase):
    """
    Tests for L{decode} and L{decode_local}.
    """

    def test_readable(self) -> None:
        """
        A readable address decodes to the day and the recipient.
        """
        address = encode("jane+debian@example.org", DAY, SECRET, FQDN, token=TOKEN)
        self.assertEqual(
            decode(address, SECRET, FQDN),
            VerpInfo(day=DAY, email="jane+debian@example.org", token=TOKEN),
        )

    def test_decode_local(self) -> None:
        """
        L{decode_local} takes only the text after C{bounces+}.
        """
        address = encode("jane@example.org", DAY, SECRET, FQDN, token=TOKEN)
        after = _local(address).partition("+")[2]
        self.assertEqual(
            decode_local(after, SECRET), VerpInfo(DAY, email="jane@example.org", token=TOKEN)
        )

    def test_case_changed(self) -> None:
        """
        An MTA that changes the case of the local part (tag, escapes, date
        and all) does not break verification.
        """
        address = encode("Jane.Doe+x@Example.org", DAY, SECRET, FQDN)
        for changed in (address.upper(), address.lower(), address.swapcase()):
            info = decode(changed, SECRET, FQDN)
            self.assertEqual(_fold(info.email), "jane.doe+x@example.org")

    def test_lenient_envelope_syntax(self) -> None:
        """
        Angle brackets, blanks around, a final dot on the domain and an
        uppercase prefix are accepted.
        """
        address = encode("jane@example.org", DAY, SECRET, FQDN)
        local = _local(address)
        for variant in [
            f"<{address}>",
            f"  {address}\n",
            f"{local}@{FQDN}.",
            f"{local}@TRACKER.Example",
            "BOUNCES" + address[len("bounces") :],
        ]:
            self.assertEqual(
                decode(variant, SECRET, FQDN).email, "jane@example.org", variant
            )

    def test_other_domain(self) -> None:
        """
        A VERP address of another domain is not ours.
        """
        address = encode("jane@example.org", DAY, SECRET, FQDN)
        self.assertRaises(
            InvalidVerp, decode, _local(address) + "@evil.example", SECRET, FQDN
        )
        self.assertRaises(InvalidVerp, decode, _local(address), SECRET, FQDN)

    def test_other_prefix(self) -> None:
        """
        Only C{bounces+} addresses are VERP addresses.
        """
        address = encode("jane@example.org", DAY, SECRET, FQDN)
        for prefix in ("bounce+", "bouncesx", "owner+", "bounces-"):
            forged = prefix + address[len("bounces+") :]
            self.assertRaises(InvalidVerp, decode, forged, SECRET, FQDN)

    def test_tag_from_another_secret(self) -> None:
        """
        An address made with another secret does not verify.
        """
        for recipient in ("a" * 40 + "@b.org", "jane@b.org"):
            address = encode(recipient, DAY, OTHER_SECRET, FQDN, email_id=5)
            self.assertRaises(InvalidVerp, decode, address, SECRET, FQDN)

    def test_forged_tags(self) -> None:
        """
        Someone who knows the format but not the secret cannot make a
        verifying address: missing, malformed and wrong tags are refused.
        """
        for after in [
            "20240131-jane=example.org",
            "20240131--jane=example.org",
            "20240131-aaaaaaaa-jane=example.org",
            "20240131-p6wc4ob-jane+2Bdebian=example.org",
            "20240131-p6wc4obsa-jane+2Bdebian=example.org",
            "20240131-p6wc4ob1-jane+2Bdebian=example.org",
            "20240131-p6wc4obs-jane+2Bdebiam=example.org",
            "20240131-aaaaaaaa-4711",
        ]:
            self.assertRaises(InvalidVerp, decode_local, after, SECRET)

    def test_tag_bound_to_day(self) -> None:
        """
        A genuine tag moved to another day does not verify, so old bounces
        cannot be replayed as new ones.
        """
        for email_id in (None, 4711):
            recipient = "jane@example.org" if email_id is None else "x" * 60 + "@y.org"
            after = _local(encode(recipient, DAY, SECRET, FQDN, email_id)).partition(
                "+"
            )[2]
            moved = "20240201" + after[8:]
            self.assertRaises(InvalidVerp, decode_local, moved, SECRET)

    def test_forms_not_interchangeable(self) -> None:
        """
        The tag of a compact address does not verify in a readable one, nor
        the other way round: the two forms are signed for different purposes.
        """
        compact = _local(encode("x" * 60 + "@y.org", DAY, SECRET, FQDN, 42, token=TOKEN))
        tag = compact.split("-")[1]
        self.assertRaises(InvalidVerp, decode_local, f"20240131{TOKEN}-{tag}-42=y.org", SECRET)
        readable = _local(encode("42@y.org", DAY, SECRET, FQDN, token=TOKEN))
        tag = readable.split("-")[1]
        self.assertRaises(InvalidVerp, decode_local, f"20240131{TOKEN}-{tag}-42", SECRET)

    def test_garbled(self) -> None:
        """
        Malformed dates, escapes, ids and separators are refused as
        L{InvalidVerp}.
        """
        address = encode("jane@example.org", DAY, SECRET, FQDN, token=TOKEN)
        tag = _local(address).split("-")[1]
        for after in [
            f"20240131{TOKEN}x-{tag}-jane=example.org",
            f"20240131k3x7-{tag}-jane=example.org",
            f"20240131k3x1q-{tag}-jane=example.org",
            f"20240131-{TOKEN}-{tag}-jane=example.org",
            "",
            "-",
            "--",
            "20240131",
            f"20240230-{tag}-jane=example.org",
            f"00000101-{tag}-jane=example.org",
            f"2024013-{tag}-jane=example.org",
            f"2024-01-31-{tag}-jane=example.org",
            f"\uff12\uff10\uff12\uff14\uff10\uff11\uff13\uff11-{tag}-jane=example.org",
            f"20240131{TOKEN}-{tag}-jane",
            f"20240131{TOKEN}-{tag}-=example.org",
            f"20240131{TOKEN}-{tag}-jane=",
            f"20240131{TOKEN}-{tag}-jane=exa=mple.org",
            f"20240131{TOKEN}-{tag}-jane==example.org",
            f"20240131{TOKEN}-{tag}-ja+G1ne=example.org",
            f"20240131{TOKEN}-{tag}-jane+2=example.org",
            f"20240131{TOKEN}-{tag}-jane+=example.org",
            f"20240131{TOKEN}-{tag}-ja+FFne=example.org",
            f"20240131{TOKEN}-{tag}-ja+0Ane=example.org",
            f"20240131{TOKEN}-{tag}-ja-ne=example.org",
            f"20240131{TOKEN}-{tag}-ja ne=example.org",
            f"20240131{TOKEN}-{tag}-j\u00e4ne=example.org",
            f"20240131{TOKEN}-{tag}-0042",
            f"20240131{TOKEN}-{tag}-9223372036854775808",
            f"20240131{TOKEN}-{tag}-99999999999999999999999",
            f"20240131{TOKEN}-{tag}--1",
            f"20240131{TOKEN}-{tag}-",
            "x" * 5000,
        ]:
            self.assertRaises(InvalidVerp, decode_local, after, SECRET)

    def test_truncated(self) -> None:
        """
        Every truncation of a genuine address is refused.
        """
        for email_id in (None, 4711):
            recipient = "jane@example.org" if email_id is None else "x" * 60 + "@y.org"
            address = encode(recipient, DAY, SECRET, FQDN, email_id)
            for end in range(len(address)):
                self.assertRaises(
                    InvalidVerp, decode, address[:end], SECRET, FQDN
                )

    def test_not_text(self) -> None:
        """
        Input that is not text at all is refused as L{InvalidVerp} too.
        """
        for value in (None, b"bounces+x@tracker.example", 42, ["x"]):
            self.assertRaises(InvalidVerp, decode, value, SECRET, FQDN)
            self.assertRaises(InvalidVerp, decode_local, value, SECRET)

    def test_empty_secret(self) -> None:
        """
        Decoding with no secret configured is a configuration error, not a
        bad address.
        """
        self.assertRaises(ValueError, decode, "bounces+x@t", "", FQDN)
        self.assertRaises(ValueError, decode_local, "x", "")

    def test_invalid_verp_is_tracker_error(self) -> None:
        """
        L{InvalidVerp} is a L{TrackerError}, as all our deliberate errors are.
        """
        self.assertTrue(issubclass(InvalidVerp, TrackerError))

    @hsettings
    @given(recipients, days, email_ids)
    def test_round_trip(self, recipient, day, email_id) -> None:
        """
        Any recipient and day come back from the address: the recipient
        itself when the readable form fits, its id otherwise.
        """
        address = encode(recipient, day, SECRET, FQDN, email_id)
        info = decode(address, SECRET, FQDN)
        self.assertEqual(info.day, day)
        if info.email is not None:
            self.assertEqual(info.email, recipient)
            self.assertIsNone(info.email_id)
        else:
            self.assertEqual(info.email_id, email_id)
            self.assertRaises(ValueError, encode, recipient, day, SECRET, FQDN)

    @hsettings
    @given(plain_recipients, days)
    def test_round_trip_without_id(self, recipient, day) -> None:
        """
        Ordinary short addresses need no id.
        """
        info = decode(encode(recipient, day, SECRET, FQDN, token=TOKEN), SECRET, FQDN)
        self.assertEqual(info, VerpInfo(day=day, email=recipient, token=TOKEN))

    @hsettings
    @given(recipients, days, email_ids, st.sampled_from(["upper", "lower", "swapcase"]))
    def test_round_trip_case_changed(self, recipient, day, email_id, how) -> None:
        """
        Changing the case of a whole address keeps it valid, and the recipient
        comes back the same but for the case of its ASCII letters.
        """
        address = encode(recipient, day, SECRET, FQDN, email_id)
        changed = getattr(address.rpartition("@")[0], how)() + "@" + FQDN
        info = decode(changed, SECRET, FQDN)
        self.assertEqual(info.day, day)
        if info.email is not None:
            self.assertEqual(_fold(info.email), _fold(recipient))
        else:
            self.assertEqual(info.email_id, email_id)

    @hsettings
    @given(recipients, days, email_ids, st.data())
    def test_any_deletion_refused(self, recipient, day, email_id, data) -> None:
        """
        Deleting any one character of a genuine address makes it invalid.
        """
        address = encode(recipient, day, SECRET, FQDN, email_id)
        index = data.draw(st.integers(0, len(address) - 1))
        mutated = address[:index] + address[index + 1 :]
        self.assertRaises(InvalidVerp, decode, mutated, SECRET, FQDN)

    @hsettings
    @given(recipients, days, email_ids, st.data())
    def test_any_substitution_refused(self, recipient, day, email_id, data) -> None:
        """
        Replacing any one character of a genuine address by another (not the
        same letter in the other case) makes it invalid.
        """
        address = encode(recipient, day, SECRET, FQDN, email_id)
        index = data.draw(st.integers(0, len(address) - 1))
        new = data.draw(st.characters(blacklist_categories=("Cs",)))
        assume(_fold(new) != _fold(address[index]))
        mutated = address[:index] + new + address[index + 1 :]
        self.assertRaises(InvalidVerp, decode, mutated, SECRET, FQDN)

    @hsettings
    @given(recipients, days, email_ids)
    def test_other_secret_refused(self, recipient, day, email_id) -> None:
        """
        No address made with another secret verifies.
        """
        address = encode(recipient, day, OTHER_SECRET, FQDN, email_id)
        self.assertRaises(InvalidVerp, decode, address, SECRET, FQDN)

    @hsettings
    @given(st.text(max_size=200))
    def test_fuzz_text(self, text) -> None:
        """
        Arbitrary text gives L{InvalidVerp} and nothing else.
        """
        self.assertRaises(InvalidVerp, decode, text, SECRET, FQDN)
        self.assertRaises(InvalidVerp, decode_local, text, SECRET)
        self.assertRaises(InvalidVerp, decode, f"bounces+{text}@{FQDN}", SECRET, FQDN)

    @hsettings
    @given(
        st.from_regex(
            r"[0-9]{8}([A-Za-z2-7]{5})?-[A-Za-z2-7]{8}-"
            r"((?:[A-Za-z0-9._]|\+[0-9A-Fa-f]{2})+=(?:[A-Za-z0-9._]|\+[0-9A-Fa-f]{2})+"
            r"|[0-9]+)",
            fullmatch=True,
        )
    )
    def test_fuzz_well_formed(self, text) -> None:
        """
        Text of the right shape but made without the secret gives
        L{InvalidVerp} and nothing else.
        """
        self.assertRaises(InvalidVerp, decode_local, text, SECRET)


class VersionOneTests(SynchronousTestCase):
    """
    Addresses signed before copy tokens (version 1) still verify while their
    copies may bounce.
    """

    def test_pinned_addresses_decode(self) -> None:
        """
        Envelope senders made by the previous release decode, in both
        forms, and name no copy.
        """
        readable = decode(
            "bounces+20240131-p6wc4obs-jane+2Bdebian=example.org@tracker.example",
            SECRET, FQDN)
        self.assertEqual(readable, VerpInfo(DAY, email="jane+debian@example.org"))
        self.assertIsNone(readable.copy)
        compact = decode("bounces+20240131-6ebd3vcv-4711@tracker.example", SECRET, FQDN)
        self.assertEqual(compact, VerpInfo(DAY, email_id=4711))
        self.assertIsNone(compact.copy)

    def test_case_changed(self) -> None:
        """
        A version-1 address whose case an MTA changed still verifies.
        """
        info = decode("BOUNCES+20240131-P6WC4OBS-JANE+2BDEBIAN=EXAMPLE.ORG@tracker.example",
                      SECRET, FQDN)
        self.assertEqual(_fold(info.email), "jane+debian@example.org")

    def test_version_one_tag_does_not_take_a_token(self) -> None:
        """
        A genuine version-1 tag with a token added, or a version-2 tag with
        the token taken away, does not verify: the versions are signed for
        different purposes.
        """
        self.assertRaises(InvalidVerp, decode_local,
                          f"20240131{TOKEN}-p6wc4obs-jane+2Bdebian=example.org", SECRET)
        self.assertRaises(InvalidVerp, decode_local,
                          "20240131-lgqkgurz-jane+2Bdebian=example.org", SECRET)


class CopyTests(SynchronousTestCase):
    """
    Tests for L{VerpInfo.copy}, the identity of a copy.
    """

    def test_same_copy_whatever_the_case(self) -> None:
        """
        Two bounces to one address, one with its case changed by an MTA,
        name the same copy.
        """
        address = encode("Jane@Example.org", DAY, SECRET, FQDN, token=TOKEN)
        first = decode(address, SECRET, FQDN)
        second = decode(address.upper().replace(FQDN.upper(), FQDN), SECRET, FQDN)
        self.assertEqual(first.copy, second.copy)
        self.assertEqual(first.copy, "20240131k3x7q:jane@example.org")

    def test_copies_differ(self) -> None:
        """
        Another recipient, another day or another fan-out is another copy.
        """
        base = decode(encode("a@b.org", DAY, SECRET, FQDN, token=TOKEN), SECRET, FQDN)
        others = [
            encode("c@b.org", DAY, SECRET, FQDN, token=TOKEN),
            encode("a@b.org", DAY + datetime.timedelta(days=1), SECRET, FQDN, token=TOKEN),
            encode("a@b.org", DAY, SECRET, FQDN, token="aaaaa"),
        ]
        for address in others:
            self.assertNotEqual(decode(address, SECRET, FQDN).copy, base.copy)


class VerpInfoTests(SynchronousTestCase):
    """
    Tests for L{VerpInfo}.
    """

    def test_exactly_one(self) -> None:
        """
        A L{VerpInfo} has either an address or an id, never both or neither.
        """
        self.assertRaises(ValueError, VerpInfo, DAY)
        self.assertRaises(ValueError, VerpInfo, DAY, "a@b.org", 1)
        self.assertEqual(VerpInfo(DAY, email_id=0).email_id, 0)


class IsExpiredTests(SynchronousTestCase):
    """
    Tests for L{is_expired}.
    """

    def test_age(self) -> None:
        """
        A bounce counts up to C{max_age_days} days after the copy was sent,
        not one day more.
        """
        info = VerpInfo(DAY, email="a@b.org")
        self.assertFalse(is_expired(info, DAY, max_age_days=4))
        self.assertFalse(is_expired(info, DAY + datetime.timedelta(days=4), 4))
        self.assertTrue(is_expired(info, DAY + datetime.timedelta(days=5), 4))
        self.assertFalse(is_expired(info, DAY, max_age_days=0))
        self.assertTrue(is_expired(info, DAY + datetime.timedelta(days=1), 0))

    def test_default(self) -> None:
        """
        By default a bounce counts for ten days, past the retry time of the
        usual MTAs.
        """
        info = VerpInfo(DAY, email="a@b.org")
        self.assertEqual(verp.DEFAULT_MAX_AGE_DAYS, 10)
        self.assertFalse(is_expired(info, DAY + datetime.timedelta(days=10)))
        self.assertTrue(is_expired(info, DAY + datetime.timedelta(days=11)))

    def test_future(self) -> None:
        """
        A date one day ahead is clock skew and counts; further ahead does not.
        """
        info = VerpInfo(DAY, email="a@b.org")
        self.assertFalse(is_expired(info, DAY - datetime.timedelta(days=1)))
        self.assertTrue(is_expired(info, DAY - datetime.timedelta(days=2)))

    def test_extreme_dates(self) -> None:
        """
        The first and last representable days do not overflow.
        """
        low, high = datetime.date.min, datetime.date.max
        self.assertTrue(is_expired(VerpInfo(low, email_id=1), high))
        self.assertTrue(is_expired(VerpInfo(high, email_id=1), low))
        self.assertFalse(is_expired(VerpInfo(high, email_id=1), high))
        self.assertFalse(is_expired(VerpInfo(low, email_id=1), low))

    def test_bad_arguments(self) -> None:
        """
        A negative age or a datetime for today are programming errors.
        """
        info = VerpInfo(DAY, email="a@b.org")
        self.assertRaises(ValueError, is_expired, info, DAY, -1)
        self.assertRaises(TypeError, is_expired, info, datetime.datetime(2024, 1, 31))

    @hsettings
    @given(days, days, st.integers(0, 4000))
    def test_matches_day_arithmetic(self, sent, today, max_age) -> None:
        """
        Expiry is exactly: more than C{max_age_days} old, or more than a day
        ahead.
        """
        info = VerpInfo(sent, email_id=1)
        age = (today - sent).days
        self.assertEqual(is_expired(info, today, max_age), age > max_age or age < -1)
