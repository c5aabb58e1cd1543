"""
Vendors: the distribution-specific rules of classification (see L{base}).
"""

from trackermail.vendor.base import IVendor, SkipMessage, load_vendor

__all__ = ["IVendor", "SkipMessage", "load_vendor"]
