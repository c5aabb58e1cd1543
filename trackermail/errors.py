# -*- test-case-name: tests.test_processing -*-
"""
The exception hierarchy of trackermail.

The processor decides what to do with a message by the type of the failure:
L{TemporaryFailure} means "try again later", L{PermanentFailure} means "this
message can never be processed" and it goes to C{failed/}.
"""


class TrackerError(Exception):
    """
    Base class of every error trackermail raises on purpose.
    """


class ConfigError(TrackerError):
    """
    The configuration is invalid; the message names the key.
    """


class TemporaryFailure(TrackerError):
    """
    Processing failed for a reason that may go away (database down, disk full).
    """


class PermanentFailure(TrackerError):
    """
    The message can never be processed as it is.
    """


class StoreError(TrackerError):
    """
    Base class of the store's domain errors.
    """


class InvalidValue(StoreError, ValueError):
    """
    A value (email address, package name, keyword, slug) is malformed.
    """


class UnknownPackage(StoreError):
    """
    No package of that name is known.
    """


class UnknownTeam(StoreError):
    """
    No team with that slug exists.
    """


class UnknownKeyword(StoreError):
    """
    No keyword of that name exists.
    """


class UnknownEmail(StoreError):
    """
    The address is not known to the tracker.
    """


class AlreadyExists(StoreError):
    """
    The thing to create already exists.
    """


class StoreUnavailable(TemporaryFailure, StoreError):
    """
    The database cannot be reached right now.
    """
