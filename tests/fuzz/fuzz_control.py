"""
atheris harness: the control parser and the whole control handler on an
in-memory store. Expected outcomes: an Outcome, or a PermanentFailure.
"""

import sys

import _common  # noqa: F401  (sys.path)
import atheris

with atheris.instrument_imports():
    import email
    import email.policy

    from tests.support.pipeline import make_pipeline
    from trackermail import message
    from trackermail.control import commands, handler, parser  # noqa: F401
    from trackermail.errors import PermanentFailure
    from trackermail.handling import Outcome


class _Case:
    def addCleanup(self, *args, **kwargs):
        pass


PROCESSOR, STORE, CLOCK = make_pipeline(_Case())


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 2)
    if mode == 0:
        for line in parser.lines_of(_common.text(fdp)):
            parser.parse(line)
        return
    raw = fdp.ConsumeBytes(fdp.remaining_bytes())
    if mode == 1:
        try:
            msg = email.message_from_bytes(raw, policy=email.policy.default)
        except Exception:
            return  # CPython's own parser bug; the processor guards it
        message.plain_text(msg)
        parser.subject_line(msg)
        return
    CLOCK.now += 1
    results = []
    PROCESSOR.process_bytes(b"Delivered-To: control@tracker.example.org\n" + raw).addBoth(
        results.append)
    result = results[0]
    if isinstance(result, Outcome):
        return
    if result.check(PermanentFailure):
        return
    result.raiseException()


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
