# -*- test-case-name: tests.vendor.test_generic -*-
"""
The C{generic} vendor: no distribution-specific rules.

Mail is classified by its address and the C{X-Distro-Tracker-*} headers
only; C{default} mail needs C{X-Distro-Tracker-Approved}; no extra headers
and no news.
"""

from __future__ import annotations

from zope.interface import implementer

from trackermail.vendor.base import IVendor, NewsSource


@implementer(IVendor)
class GenericVendor:
    name = "generic"

    def classify(self, msg, package, keyword):
        return ((package,) if package else (), keyword)

    def approve_default(self, msg) -> bool:
        return False

    def extra_headers(self, msg, package, keyword, team) -> list[tuple[str, str]]:
        return []

    def news(self, msg, packages, keyword) -> list[NewsSource]:
        return []


vendor = GenericVendor()
