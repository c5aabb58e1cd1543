"""
Tests for L{trackermail.signing}.
"""

from __future__ import annotations

import os
import re

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from trackermail.errors import TrackerError
from trackermail.signing import (
    DEFAULT_MAX_AGE_DAYS,
    ExpiredToken,
    InvalidToken,
    check_unsubscribe_token,
    keyed_digest,
    make_unsubscribe_token,
)

SECRET = "s3cret-key"
OTHER_SECRET = "another-key"
NOW = 1_700_000_000
DAY = 86400

_EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "300"))
hsettings = settings(max_examples=_EXAMPLES, deadline=None, database=None)

_URL_SAFE = re.compile(r"[A-Za-z0-9_.-]+")
_TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."

packages = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9+.-]{0,40}", fullmatch=True),
    st.text(min_size=1, max_size=60),
)
emails = st.one_of(
    st.emails(),
    st.text(min_size=1, max_size=300),
)
times = st.integers(min_value=0, max_value=2**40)


class KeyedDigestTests(SynchronousTestCase):
    """
    Tests for L{keyed_digest}.
    """

    def test_separates_fields(self) -> None:
        """
        Moving text from one field to the next changes the digest.
        """
        self.assertNotEqual(
            keyed_digest(SECRET, "p", "ab", "c"), keyed_digest(SECRET, "p", "a", "bc")
        )
        self.assertNotEqual(
            keyed_digest(SECRET, "p", "a"), keyed_digest(SECRET, "pa")
        )

    def test_separates_types(self) -> None:
        """
        An int, its text and its bytes are signed differently.
        """
        digests = {
            keyed_digest(SECRET, "p", 1),
            keyed_digest(SECRET, "p", "1"),
            keyed_digest(SECRET, "p", b"1"),
        }
        self.assertEqual(len(digests), 3)

    def test_purpose_and_key(self) -> None:
        """
        Another purpose or another secret gives another digest; the same
        input gives the same 32 bytes.
        """
        base = keyed_digest(SECRET, "p", "x")
        self.assertEqual(len(base), 32)
        self.assertEqual(base, keyed_digest(SECRET, "p", "x"))
        self.assertNotEqual(base, keyed_digest(SECRET, "q", "x"))
        self.assertNotEqual(base, keyed_digest(OTHER_SECRET, "p", "x"))

    def test_bad_input(self) -> None:
        """
        An empty secret, booleans and unknown types are refused.
        """
        self.assertRaises(ValueError, keyed_digest, "", "p", "x")
        self.assertRaises(TypeError, keyed_digest, SECRET, "p", True)
        self.assertRaises(TypeError, keyed_digest, SECRET, "p", 1.5)

    def test_odd_text(self) -> None:
        """
        Lone surrogates in the secret or a field do not crash signing.
        """
        self.assertEqual(len(keyed_digest("\ud800", "p", "\udfff")), 32)


class UnsubscribeTokenTests(SynchronousTestCase):
    """
    Tests for L{make_unsubscribe_token} and L{check_unsubscribe_token}.
    """

    def test_round_trip(self) -> None:
        """
        A fresh token gives back its package and address.
        """
        token = make_unsubscribe_token(SECRET, "dpkg", "jane@example.org", NOW)
        self.assertEqual(
            check_unsubscribe_token(SECRET, token, NOW), ("dpkg", "jane@example.org")
        )

    def test_url_safe(self) -> None:
        """
        The token can be put in a URL path as it is.
        """
        token = make_unsubscribe_token(SECRET, "g++", 'a "b"/c?d#e@x.org', NOW)
        self.assertTrue(_URL_SAFE.fullmatch(token), token)

    def test_lifetime(self) -> None:
        """
        A token is valid for C{max_age_days} days to the second, then
        expired; the default is 60 days.
        """
        token = make_unsubscribe_token(SECRET, "dpkg", "jane@example.org", NOW)
        self.assertEqual(DEFAULT_MAX_AGE_DAYS, 60)
        check_unsubscribe_token(SECRET, token, NOW + 60 * DAY)
        self.assertRaises(
            ExpiredToken, check_unsubscribe_token, SECRET, token, NOW + 60 * DAY + 1
        )
        check_unsubscribe_token(SECRET, token, NOW + 2 * DAY, max_age_days=2)
        self.assertRaises(
            ExpiredToken,
            check_unsubscribe_token,
            SECRET,
            token,
            NOW + 2 * DAY + 1,
            max_age_days=2,
        )

    def test_expired_says_what_for(self) -> None:
        """
        An expired token is an invalid token, and still tells which package
        and address it was for, so the page can explain.
        """
        token = make_unsubscribe_token(SECRET, "dpkg", "jane@example.org", NOW)
        error = self.assertRaises(
            ExpiredToken, check_unsubscribe_token, SECRET, token, NOW + 61 * DAY
        )
        self.assertIsInstance(error, InvalidToken)
        self.assertIsInstance(error, TrackerError)
        self.assertEqual((error.package, error.email), ("dpkg", "jane@example.org"))

    def test_future(self) -> None:
        """
        A token from a clock up to a day ahead is accepted; further ahead it
        is refused, and not as expired.
        """
        token = make_unsubscribe_token(SECRET, "dpkg", "jane@example.org", NOW + DAY)
        check_unsubscribe_token(SECRET, token, NOW)
        token = make_unsubscribe_token(
            SECRET, "dpkg", "jane@example.org", NOW + DAY + 1
        )
        error = self.assertRaises(
            InvalidToken, check_unsubscribe_token, SECRET, token, NOW
        )
        self.assertNotIsInstance(error, ExpiredToken)

    def test_other_secret(self) -> None:
        """
        A token made with another secret is refused.
        """
        token = make_unsubscribe_token(OTHER_SECRET, "dpkg", "jane@example.org", NOW)
        self.assertRaises(InvalidToken, check_unsubscribe_token, SECRET, token, NOW)

    def test_swapped_payload(self) -> None:
        """
        The signature of one token does not cover the content of another.
        """
        mine = make_unsubscribe_token(SECRET, "dpkg", "me@example.org", NOW)
        theirs = make_unsubscribe_token(SECRET, "dpkg", "victim@example.org", NOW)
        forged = theirs.split(".")[0] + "." + mine.split(".")[1]
        self.assertRaises(InvalidToken, check_unsubscribe_token, SECRET, forged, NOW)

    def test_every_single_change(self) -> None:
        """
        Changing, deleting or adding any one character anywhere in a token
        makes it invalid.
        """
        token = make_unsubscribe_token(SECRET, "dpkg", "jane@example.org", NOW)
        for index in range(len(token)):
            for char in _TOKEN_CHARS:
                if char != token[index]:
                    forged = token[:index] + char + token[index + 1 :]
                    self.assertRaises(
                        InvalidToken, check_unsubscribe_token, SECRET, forged, NOW
                    )
            self.assertRaises(
                InvalidToken,
                check_unsubscribe_token,
                SECRET,
                token[:index] + token[index + 1 :],
                NOW,
            )
        for char in _TOKEN_CHARS:
            self.assertRaises(
                InvalidToken, check_unsubscribe_token, SECRET, token + char, NOW
            )

    def test_garbled(self) -> None:
        """
        Malformed tokens are refused as L{InvalidToken}.
        """
        token = make_unsubscribe_token(SECRET, "dpkg", "jane@example.org", NOW)
        payload, mac = token.split(".")
        for bad in [
            "",
            ".",
            payload,
            payload + ".",
            "." + mac,
            token + "." + mac,
            token + "=",
            payload + "==." + mac,
            token.replace(".", "%2E"),
            " " + token,
            token + "\n",
            "x" * 10000,
        ]:
            self.assertRaises(InvalidToken, check_unsubscribe_token, SECRET, bad, NOW)

    def test_not_text(self) -> None:
        """
        A token that is not text is refused as L{InvalidToken}.
        """
        for value in (None, b"abc.def", 42):
            self.assertRaises(
                InvalidToken, check_unsubscribe_token, SECRET, value, NOW
            )

    def test_bad_arguments(self) -> None:
        """
        Empty secrets, packages or addresses, negative times and ages are
        programming errors, not bad tokens.
        """
        self.assertRaises(ValueError, make_unsubscribe_token, "", "p", "a@b", NOW)
        self.assertRaises(ValueError, make_unsubscribe_token, SECRET, "", "a@b", NOW)
        self.assertRaises(ValueError, make_unsubscribe_token, SECRET, "p", "", NOW)
        self.assertRaises(ValueError, make_unsubscribe_token, SECRET, "p", "a@b", -1)
        self.assertRaises(TypeError, make_unsubscribe_token, SECRET, "p", "a@b", 1.5)
        self.assertRaises(TypeError, make_unsubscribe_token, SECRET, "p", "a@b", True)
        self.assertRaises(TypeError, make_unsubscribe_token, SECRET, None, "a@b", NOW)
        token = make_unsubscribe_token(SECRET, "p", "a@b", NOW)
        self.assertRaises(ValueError, check_unsubscribe_token, "", token, NOW)
        self.assertRaises(ValueError, check_unsubscribe_token, SECRET, token, NOW, -1)
        self.assertRaises(TypeError, check_unsubscribe_token, SECRET, token, NOW, 1.0)
        self.assertRaises(TypeError, check_unsubscribe_token, SECRET, token, "1")

    @hsettings
    @given(packages, emails, times, st.integers(0, 60 * DAY))
    def test_round_trip_any(self, package, email, issued, age) -> None:
        """
        Any package and address, hostile or not, come back intact while the
        token is valid, from a URL-safe token.
        """
        token = make_unsubscribe_token(SECRET, package, email, issued)
        self.assertTrue(_URL_SAFE.fullmatch(token), token)
        self.assertEqual(
            check_unsubscribe_token(SECRET, token, issued + age), (package, email)
        )

    @hsettings
    @given(packages, emails, times, st.integers(1, 10**9))
    def test_expired_any(self, package, email, issued, late) -> None:
        """
        Any token checked later than its lifetime is expired.
        """
        token = make_unsubscribe_token(SECRET, package, email, issued)
        self.assertRaises(
            ExpiredToken,
            check_unsubscribe_token,
            SECRET,
            token,
            issued + 60 * DAY + late,
        )

    @hsettings
    @given(packages, emails, times, st.data())
    def test_tampering_any(self, package, email, issued, data) -> None:
        """
        Replacing any one character of any token is detected.
        """
        token = make_unsubscribe_token(SECRET, package, email, issued)
        index = data.draw(st.integers(0, len(token) - 1))
        char = data.draw(st.sampled_from(_TOKEN_CHARS))
        assume(char != token[index])
        forged = token[:index] + char + token[index + 1 :]
        self.assertRaises(
            InvalidToken, check_unsubscribe_token, SECRET, forged, issued
        )

    @hsettings
    @given(packages, emails, times)
    def test_other_secret_any(self, package, email, issued) -> None:
        """
        No token made with another secret verifies.
        """
        token = make_unsubscribe_token(OTHER_SECRET, package, email, issued)
        self.assertRaises(
            InvalidToken, check_unsubscribe_token, SECRET, token, issued
        )

    @hsettings
    @given(st.text(max_size=600), times)
    def test_fuzz_text(self, text, now) -> None:
        """
        Arbitrary text gives L{InvalidToken} and nothing else.
        """
        self.assertRaises(InvalidToken, check_unsubscribe_token, SECRET, text, now)

    @hsettings
    @given(st.from_regex(r"[A-Za-z0-9_-]{1,200}\.[A-Za-z0-9_-]{1,40}", fullmatch=True))
    def test_fuzz_well_formed(self, text) -> None:
        """
        Text shaped like a token but made without the secret gives
        L{InvalidToken} and nothing else.
        """
        self.assertRaises(InvalidToken, check_unsubscribe_token, SECRET, text, NOW)
