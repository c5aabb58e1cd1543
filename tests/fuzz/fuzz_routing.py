"""
atheris harness: route_address and find_delivery_address. Expected
exceptions: Rejection, NoDeliveryAddress, ConflictingDeliveryAddresses.
An accepted address must be in our domain.
"""

import sys

import atheris
from _common import FQDN, text

with atheris.instrument_imports():
    import email
    import email.policy

    from trackermail import routing


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        address = text(fdp, 300)
        try:
            route = routing.route_address(address, FQDN, fdp.ConsumeBool())
        except routing.Rejection:
            return
        domain = address.strip().strip("<>").rpartition("@")[2]
        if domain.lower().rstrip(".") != FQDN or not route.address.endswith("@" + FQDN):
            raise AssertionError(f"accepted a foreign address: {address!r} -> {route!r}")
        return
    raw = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
    except Exception:
        # CPython's parser itself can raise (e.g. IndexError on a MIME
        # parameter "t*" without "="); the processor turns that into
        # UnparsableMessage before routing, so it is not the router's input.
        return
    try:
        found = routing.find_delivery_address(msg, FQDN)
    except (routing.NoDeliveryAddress, routing.ConflictingDeliveryAddresses):
        return
    if not found.lower().endswith("@" + FQDN):
        raise AssertionError(f"delivery address not ours: {found!r}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
