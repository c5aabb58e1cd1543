"""
Tests for trackermail.routing.
"""

from __future__ import annotations

import email
import email.policy

from twisted.trial.unittest import SynchronousTestCase

from trackermail.errors import PermanentFailure
from trackermail.routing import (
    ConflictingDeliveryAddresses,
    NoDeliveryAddress,
    NotOurDomain,
    Rejection,
    Route,
    UnknownRecipient,
    find_delivery_address,
    route_address,
)

FQDN = "tracker.example.org"


def route(local, unqualified=False):
    return route_address(f"{local}@{FQDN}", FQDN, unqualified)


class RouteAddressTests(SynchronousTestCase):
    def test_control(self):
        """control@ reaches the command bot."""
        self.assertEqual(route("control"), Route("control", f"control@{FQDN}"))

    def test_dispatch_plain(self):
        """dispatch@ reaches dispatch without a package."""
        self.assertEqual(route("dispatch"), Route("dispatch", f"dispatch@{FQDN}"))

    def test_dispatch_package(self):
        """dispatch+PKG@ names the package."""
        r = route("dispatch+g++-12")
        self.assertEqual((r.service, r.package, r.keyword), ("dispatch", "g++-12", None))

    def test_dispatch_package_keyword(self):
        """dispatch+PKG_KW@ names package and keyword, split on the first underscore."""
        r = route("dispatch+libfoo1.2_bts-control")
        self.assertEqual((r.package, r.keyword), ("libfoo1.2", "bts-control"))

    def test_case_insensitive(self):
        """The local part and domain are matched without regard to case."""
        r = route_address("Dispatch+Foo_BTS@Tracker.Example.ORG", FQDN, False)
        self.assertEqual(r, Route("dispatch", f"dispatch+foo_bts@{FQDN}", package="foo",
                                  keyword="bts"))

    def test_angle_brackets(self):
        """An address in angle brackets routes like a bare one."""
        self.assertEqual(route_address(f"<control@{FQDN}>", FQDN, False).service, "control")

    def test_team(self):
        """team+SLUG@ names the team."""
        r = route("team+pkg-perl")
        self.assertEqual((r.service, r.team), ("team", "pkg-perl"))

    def test_bounces_keeps_case(self):
        """bounces+ANYTHING@ keeps the VERP part exactly as written."""
        r = route("bounces+20240101-AbC=x.org")
        self.assertEqual((r.service, r.verp), ("bounces", "20240101-AbC=x.org"))
        self.assertEqual(r.address, f"bounces+20240101-abc=x.org@{FQDN}")

    def test_other_domain(self):
        """Another domain is refused as relaying with 550 5.7.1."""
        e = self.assertRaises(NotOurDomain, route_address, "a@example.com", FQDN, True)
        self.assertEqual((e.code, e.status), (550, "5.7.1"))
        self.assertIsInstance(e, Rejection)

    def test_subdomain_is_other_domain(self):
        """A subdomain of ours is not ours."""
        self.assertRaises(NotOurDomain, route_address, f"control@x.{FQDN}", FQDN, False)

    def test_unknown(self):
        """An unknown local part is refused with 550 5.1.1."""
        for local in ("nobody", "dispatch+", "team+", "bounces+", "team+Bad_Slug",
                      "dispatch+_bts", "dispatch+foo_", "dispatch+foo_b_c", "dispatch+a",
                      "control+x", "foo"):
            e = self.assertRaises(UnknownRecipient, route, local)
            self.assertEqual((e.code, e.status), (550, "5.1.1"), local)

    def test_no_local_part(self):
        """An address without a local part is unknown, not a crash."""
        self.assertRaises(UnknownRecipient, route_address, f"@{FQDN}", FQDN, True)
        self.assertRaises(UnknownRecipient, route_address, "", FQDN, True)

    def test_unqualified(self):
        """PKG@ and PKG_KW@ reach dispatch when unqualified addresses are on."""
        r = route("foo", unqualified=True)
        self.assertEqual((r.service, r.package, r.keyword), ("dispatch", "foo", None))
        r = route("foo_bts", unqualified=True)
        self.assertEqual((r.package, r.keyword), ("foo", "bts"))

    def test_unqualified_reserved(self):
        """Role accounts are never taken for packages."""
        for local in ("postmaster", "abuse", "owner", "root", "team", "bounces",
                      "control_x", "dispatch_bts"):
            self.assertRaises(UnknownRecipient, route, local, True)


class FindDeliveryAddressTests(SynchronousTestCase):
    def test_single(self):
        """The one Delivered-To at our domain is the delivery address."""
        msg = email.message_from_string(f"Delivered-To: dispatch+foo@{FQDN}\n\nbody\n")
        self.assertEqual(find_delivery_address(msg, FQDN), f"dispatch+foo@{FQDN}")

    def test_other_headers(self):
        """Envelope-To, X-Original-To and X-Envelope-To count too."""
        for name in ("Envelope-To", "X-Original-To", "X-Envelope-To"):
            msg = email.message_from_string(f"{name}: <control@{FQDN}>\n\n")
            self.assertEqual(find_delivery_address(msg, FQDN), f"control@{FQDN}")

    def test_same_address_twice(self):
        """The same address in several headers and spellings is one address."""
        msg = email.message_from_string(
            f"Delivered-To: control@{FQDN}\nX-Original-To: CONTROL@{FQDN.upper()}\n"
            "Delivered-To: someone@elsewhere.org\n\n")
        self.assertEqual(find_delivery_address(msg, FQDN), f"control@{FQDN}")

    def test_keeps_local_case(self):
        """The local part keeps its spelling, so a VERP can be decoded."""
        msg = email.message_from_string(f"Delivered-To: bounces+AbC@{FQDN.upper()}\n\n")
        self.assertEqual(find_delivery_address(msg, FQDN), f"bounces+AbC@{FQDN}")

    def test_conflict(self):
        """Two distinct addresses of ours make the message permanently failed."""
        msg = email.message_from_string(
            f"Delivered-To: control@{FQDN}\nDelivered-To: team+x@{FQDN}\n\n")
        e = self.assertRaises(ConflictingDeliveryAddresses, find_delivery_address, msg, FQDN)
        self.assertIsInstance(e, PermanentFailure)

    def test_none(self):
        """A message without our address in its delivery headers fails permanently."""
        msg = email.message_from_string("To: control@tracker.example.org\n\n")
        e = self.assertRaises(NoDeliveryAddress, find_delivery_address, msg, FQDN)
        self.assertIsInstance(e, PermanentFailure)

    def test_undecodable(self):
        """8-bit garbage in delivery headers is ignored, not a crash."""
        raw = (b"Delivered-To: \xff\xfe@" + FQDN.encode() + b"\n"
               b"X-Original-To: =?utf-8?q?broken?= <dispatch@" + FQDN.encode() + b">\n"
               b"Envelope-To: \xc3(\n\nbody\n")
        for policy in (email.policy.compat32, email.policy.default):
            msg = email.message_from_bytes(raw, policy=policy)
            self.assertEqual(find_delivery_address(msg, FQDN), f"dispatch@{FQDN}")

    def test_pairs_and_mapping(self):
        """A list of header pairs or a mapping works as well as a message."""
        self.assertEqual(
            find_delivery_address([(b"Delivered-To", f"control@{FQDN}".encode()), "junk"],
                                  FQDN), f"control@{FQDN}")
        self.assertEqual(find_delivery_address({"delivered-to": f"control@{FQDN}"}, FQDN),
                         f"control@{FQDN}")
