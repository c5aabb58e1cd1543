"""
Tests for L{trackermail.signing}.
"""

from __future__ import annotations

import base64
import os
import re

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from trackermail.errors import TrackerError
from trackermail.signing import (
    InvalidToken,
    keyed_digest,
    parse_subscription_token,
    subscription_signer,
    subscription_token,
    subscription_token_matches,
)

SECRET = "s3cret-key"
OTHER_SECRET = "another-key"

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


class SubscriptionTokenTests(SynchronousTestCase):
    """
    Tests for L{subscription_token}, L{parse_subscription_token} and
    L{subscription_token_matches}.
    """

    def token(self, sid=42, package="dpkg", email="jane@example.org", salt="salt",
              secret=SECRET):
        return subscription_token(secret, sid, package, email, salt)

    def matches(self, token, sid=42, package="dpkg", email="jane@example.org", salt="salt"):
        parsed_sid, mac = parse_subscription_token(token)
        return parsed_sid == sid and subscription_token_matches(
            SECRET, mac, sid, package, email, salt)

    def test_shape(self) -> None:
        """A token is the id, a dot and 22 URL-safe characters: short enough for a subject."""
        token = self.token()
        self.assertRegex(token, r"\A42\.[A-Za-z0-9_-]{22}\Z")
        self.assertEqual(parse_subscription_token(token)[0], 42)
        self.assertTrue(self.matches(token))

    def test_bound_to_everything_it_signs(self) -> None:
        """Another id, package, address, salt or secret gives a token that does not match."""
        token = self.token()
        self.assertFalse(self.matches(token, package="apt"))
        self.assertFalse(self.matches(token, email="joe@example.org"))
        self.assertFalse(self.matches(token, salt="new-salt"))
        self.assertFalse(self.matches(self.token(secret=OTHER_SECRET)))
        self.assertFalse(self.matches(f"43.{token.split('.')[1]}", sid=43))

    def test_mac_is_a_keyed_digest(self) -> None:
        """
        The MAC is keyed_digest over the package, id, address and salt, and
        the fan-out signer makes the same tokens as subscription_token.
        """
        mac = keyed_digest(SECRET, "unsubscribe-subscription-v1", "dpkg", 42,
                           "jane@example.org", "salt")[:16]
        expected = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
        self.assertEqual(self.token(), f"42.{expected}")
        sign = subscription_signer(SECRET, "dpkg")
        for sid, email, salt in ((42, "jane@example.org", "salt"), (7, "\udcff@x", ""),
                                 (2**63 - 1, "é@x.org", "ß")):
            self.assertEqual(sign(sid, email, salt),
                             subscription_token(SECRET, sid, "dpkg", email, salt))

    def test_bad_ids(self) -> None:
        """Ids that are not positive ints are refused when making a token."""
        self.assertRaises(ValueError, self.token, sid=0)
        self.assertRaises(ValueError, self.token, sid=2**63)
        self.assertRaises(TypeError, self.token, sid=True)
        self.assertRaises(TypeError, self.token, sid="1")
        self.assertRaises(ValueError, self.token, secret="")

    def test_malformed(self) -> None:
        """Anything not shaped like a token is L{InvalidToken}, a L{TrackerError}."""
        token = self.token()
        for bad in ("", "42", "42.", ".abc", "042." + token.split(".")[1], token + "A",
                    token[:-1], token.replace(".", "-"), "a" * 5000, None, 42,
                    "9" * 20 + "." + token.split(".")[1], "42." + "é" * 22):
            self.assertRaises(InvalidToken, parse_subscription_token, bad)
        self.assertTrue(issubclass(InvalidToken, TrackerError))

    @hsettings
    @given(st.integers(1, 2**63 - 1), packages, emails, st.text(max_size=20))
    def test_round_trip_any(self, sid, package, email, salt) -> None:
        """
        Any subscription, hostile text or not, gives a URL-safe token that
        matches it.
        """
        token = subscription_token(SECRET, sid, package, email, salt)
        self.assertTrue(_URL_SAFE.fullmatch(token), token)
        self.assertTrue(self.matches(token, sid, package, email, salt))

    @hsettings
    @given(st.integers(1, 2**40), packages, emails, st.data())
    def test_tampering_any(self, sid, package, email, data) -> None:
        """
        Replacing any one character of any token is detected: it is no
        token, or one that matches nothing it was not made for.
        """
        token = subscription_token(SECRET, sid, package, email, "salt")
        index = data.draw(st.integers(0, len(token) - 1))
        char = data.draw(st.sampled_from(_TOKEN_CHARS))
        assume(char != token[index])
        forged = token[:index] + char + token[index + 1:]
        try:
            forged_sid, mac = parse_subscription_token(forged)
        except InvalidToken:
            return
        self.assertFalse(subscription_token_matches(SECRET, mac, forged_sid, package, email,
                                                    "salt"))

    @hsettings
    @given(st.text(max_size=600))
    def test_fuzz_text(self, text) -> None:
        """
        Arbitrary text is either shaped like a token or L{InvalidToken};
        nothing else is raised.
        """
        try:
            parse_subscription_token(text)
        except InvalidToken:
            pass
