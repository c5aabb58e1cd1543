"""
Tests of trackermail.vendor, and the message fixtures the dispatch tests
share.
"""

import email
import email.policy
import os

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "dispatch")


def fixture_bytes(name: str) -> bytes:
    """
    The raw bytes of C{tests/fixtures/dispatch/NAME}.
    """
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def parse(raw: bytes):
    """
    Parse C{raw} the way the processor does.
    """
    return email.message_from_bytes(raw, policy=email.policy.default)


def fixture(name: str):
    """
    The parsed message C{tests/fixtures/dispatch/NAME}.
    """
    return parse(fixture_bytes(name))
