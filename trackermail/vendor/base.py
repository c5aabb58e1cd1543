# -*- test-case-name: tests.vendor.test_generic -*-
"""
The vendor hook: the distribution-specific rules of classification.

A vendor is selected by C{[tracker] vendor} and is one object providing
L{IVendor}. C{generic} has no rules; C{debian} knows the mail of Debian's bug
tracker, archive, build daemons, release team and VCS hosting.

Vendors read messages with L{trackermail.message}, whose readers never raise.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from zope.interface import Attribute, Interface

from trackermail.errors import ConfigError


class SkipMessage(Exception):
    """
    The vendor says: do not forward this message (it is dropped, and logged).
    """


@dataclass(frozen=True)
class NewsSource:
    """
    A vendor's verdict that a message is news for C{package}.

    @ivar create_package: whether the package name is created when the
        tracker does not know it yet (accepted uploads of new packages).
    @ivar created_by: who the news item is attributed to; L{None} means the
        message's sender.
    """

    package: str
    create_package: bool = False
    created_by: str | None = None


class IVendor(Interface):
    """
    The distribution-specific rules used by dispatch.

    Every method receives an C{email.message.Message} (normally parsed with
    C{email.policy.default}) and must not raise on malformed input, except
    L{SkipMessage} from L{classify}.
    """

    name = Attribute("The name C{[tracker] vendor} selects this vendor by.")

    def classify(msg, package, keyword):
        """
        Find the package(s) and keyword of a message.

        @param package: the package suggested so far (address or
            C{X-Distro-Tracker-Package}), or L{None}.
        @param keyword: the keyword suggested so far, or L{None}.
        @return: C{(packages, keyword)}: a tuple of package names, possibly
            empty, and a keyword or L{None}. Returning the suggestions
            unchanged means "no rule applies".
        @raise SkipMessage: the message must not be forwarded.
        """

    def approve_default(msg):
        """
        Whether a message classified C{default} is forwarded anyway.

        @return: L{bool}
        """

    def extra_headers(msg, package, keyword, team):
        """
        Headers the vendor adds to every forwarded copy.

        @param package: the package the copy is forwarded for, or L{None}
            (mail to a team).
        @param team: the team slug of a team copy, or L{None}.
        @return: a list of C{(name, value)} pairs.
        """

    def news(msg, packages, keyword):
        """
        Which packages the classified message is news for.

        @param packages: the packages the message was classified to.
        @return: a list of L{NewsSource}.
        """


# Vendors are looked up in this table, not imported by arbitrary name from
# the configuration: a typo must be a configuration error, not an import of
# some other module.
_VENDORS = {
    "generic": "trackermail.vendor.generic",
    "debian": "trackermail.vendor.debian",
}


def load_vendor(name: str) -> IVendor:
    """
    Return the vendor called C{name}.

    @raise ConfigError: no vendor has that name.
    """
    module_name = _VENDORS.get(name)
    if module_name is None:
        known = ", ".join(sorted(_VENDORS))
        raise ConfigError(
            f"[tracker] vendor: unknown vendor {name!r} (known: {known})"
        )
    return importlib.import_module(module_name).vendor
