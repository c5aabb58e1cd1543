"""
atheris harness: the VERP decoder. Expected exception: InvalidVerp. A
decoded address must round-trip (decode(encode(x)) == x), so any text that
decodes was signed with our key.
"""

import datetime
import sys

import atheris
from _common import FQDN, SECRET, text

with atheris.instrument_imports():
    from trackermail.bounces import verp


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    choice = fdp.ConsumeIntInRange(0, 2)
    if choice == 0:
        try:
            verp.decode(text(fdp, 1200), SECRET, FQDN)
        except verp.InvalidVerp:
            return
        raise AssertionError("decoded a VERP address nobody signed")
    if choice == 1:
        try:
            verp.decode_local(text(fdp, 1200), SECRET)
        except verp.InvalidVerp:
            return
        raise AssertionError("decoded a VERP address nobody signed")
    day = datetime.date.fromordinal(fdp.ConsumeIntInRange(1, 800_000))
    email_id = fdp.ConsumeIntInRange(0, 2**63 - 1) if fdp.ConsumeBool() else None
    recipient = text(fdp, 200)
    try:
        address = verp.encode(recipient, day, SECRET, FQDN, email_id=email_id)
    except ValueError:
        return
    info = verp.decode(address, SECRET, FQDN)
    if info.day != day or (info.email is not None and info.email != recipient) or (
            info.email is None and info.email_id != email_id):
        raise AssertionError(f"round trip changed {recipient!r}/{email_id} into {info!r}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
