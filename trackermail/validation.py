# -*- test-case-name: tests.test_validation -*-
"""
Checks for the values users give us: email addresses, package names,
keywords and team slugs. Each raises L{InvalidValue} with a sentence a user
can act on.
"""

import re

from trackermail.errors import InvalidValue

# Debian Policy 5.6.1: lower case letters, digits, + - . ; at least two
# characters; starts with an alphanumeric.
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
KEYWORD_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# Length bounds keep hostile values out of headers, addresses and the store.
MAX_NAME = 100
MAX_KEYWORD = 64
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_RE = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@" + _LABEL + r"(?:\." + _LABEL + r")+$"
)


def normalize_email(email: str) -> str:
    """
    Return C{email} stripped, with its case kept, or raise L{InvalidValue}.
    Identity is case-insensitive: compare with L{email_key}.
    """
    if not isinstance(email, str):
        raise InvalidValue("an email address must be text")
    candidate = email.strip()
    if candidate.startswith("<") and candidate.endswith(">"):
        candidate = candidate[1:-1].strip()
    if (
        not candidate
        or len(candidate) > 254
        or not EMAIL_RE.match(candidate)
        or ".." in candidate.split("@")[0]
        or candidate.split("@")[0].startswith(".")
        or candidate.split("@")[0].endswith(".")
        or len(candidate.split("@")[0]) > 64
    ):
        raise InvalidValue(f"{_show(email)} is not a valid email address")
    return candidate


def is_package_name(name) -> bool:
    """Whether C{name} is a valid package name (lower case, as Debian writes them)."""
    return isinstance(name, str) and len(name) <= MAX_NAME and bool(PACKAGE_RE.match(name))


def is_keyword(name) -> bool:
    """Whether C{name} is a valid keyword name."""
    return isinstance(name, str) and len(name) <= MAX_KEYWORD and bool(KEYWORD_RE.match(name))


def is_slug(slug) -> bool:
    """Whether C{slug} is a valid team slug."""
    return isinstance(slug, str) and len(slug) <= MAX_NAME and bool(SLUG_RE.match(slug))


def email_key(email: str) -> str:
    return normalize_email(email).lower()


def check_package_name(name: str) -> str:
    if not is_package_name(name):
        raise InvalidValue(f"{_show(name)} is not a valid package name")
    return name


def check_keyword(name: str) -> str:
    if not is_keyword(name):
        raise InvalidValue(f"{_show(name)} is not a valid keyword name")
    return name


def check_slug(slug: str) -> str:
    if not is_slug(slug):
        raise InvalidValue(f"{_show(slug)} is not a valid team slug")
    return slug


def _show(value) -> str:
    """
    Render a bad value for an error message without letting it inject lines.
    """
    text = repr(value) if not isinstance(value, str) else value
    text = "".join(c if c.isprintable() else "?" for c in text)
    if len(text) > 80:
        text = text[:77] + "..."
    return f'"{text}"'
