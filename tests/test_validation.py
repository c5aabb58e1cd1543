"""
Tests for L{trackermail.validation}: the one set of name rules.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from trackermail.errors import InvalidValue
from trackermail.validation import (
    check_keyword,
    check_package_name,
    check_slug,
    is_keyword,
    is_package_name,
    is_slug,
    normalize_email,
)


class PackageNameTests(SynchronousTestCase):
    def test_debian_names(self):
        """Names Debian uses are valid, upper case and one letter are not."""
        for name in ("dpkg", "libc6", "g++-12", "python3.11", "0ad"):
            self.assertTrue(is_package_name(name), name)
        for name in ("a", "Dpkg", "-dpkg", "dpkg_bts", "", "x" * 101, None, "d\npkg"):
            self.assertFalse(is_package_name(name), repr(name))

    def test_error_names_the_value(self):
        """The error quotes the bad value without its line breaks."""
        e = self.assertRaises(InvalidValue, check_package_name, "a\nb")
        self.assertEqual(str(e), '"a?b" is not a valid package name')


class KeywordAndSlugTests(SynchronousTestCase):
    def test_keywords(self):
        """Keywords are lower-case words with dashes, at most 64 characters."""
        self.assertTrue(is_keyword("bts-control"))
        self.assertTrue(is_keyword("x" * 64))
        self.assertFalse(is_keyword("x" * 65))
        self.assertFalse(is_keyword("Bts"))
        self.assertRaises(InvalidValue, check_keyword, "a b")

    def test_slugs(self):
        """Team slugs are lower-case words with dashes."""
        self.assertTrue(is_slug("debian-qa"))
        self.assertFalse(is_slug("qa team"))
        self.assertRaises(InvalidValue, check_slug, "QA")


class EmailTests(SynchronousTestCase):
    def test_case_kept(self):
        """An address keeps its case, loses its angle brackets and blanks."""
        self.assertEqual(normalize_email(" <Jane@Example.ORG> "), "Jane@Example.ORG")

    def test_invalid(self):
        """Addresses without a domain dot, with spaces or double dots are refused."""
        for bad in ("jane", "jane@localhost", "ja ne@example.org", "a..b@example.org",
                    "a@b@example.org", "x" * 65 + "@example.org", ""):
            self.assertRaises(InvalidValue, normalize_email, bad)
