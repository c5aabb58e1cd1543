"""
atheris harness: the bounce analyzer. detect() never raises; its answers
(reasons included) stay consistent. Seed it with tests/bounces/fixtures
(see README).
"""

import sys

import _common  # noqa: F401  (sys.path)
import atheris

with atheris.instrument_imports():
    from trackermail.bounces import analyzer, reasons


def TestOneInput(data: bytes) -> None:
    analysis = analyzer.detect(data)
    if not 0.0 <= analysis.score <= 1.0 + 1e-9:
        raise AssertionError(f"score out of range: {analysis.score}")
    if analysis.hard not in (True, False, None):
        raise AssertionError(f"hard is {analysis.hard!r}")
    analysis.error_for_humans()
    analysis.status
    analysis.is_hard()
    analysis.is_soft()
    for r in analysis.recipients:
        if not isinstance(r.address, str):
            raise AssertionError(f"recipient {r!r}")
        if r.reason not in reasons.REASONS:
            raise AssertionError(f"reason of {r!r}")
        if reasons.reason_group(r.reason, r.diagnostic) not in (
                "ours", "gone", "persistent-soft", "other"):
            raise AssertionError(f"group of {r!r}")
    text = data.decode("latin-1")
    if reasons.classify(None, text) not in reasons.REASONS:
        raise AssertionError("classify")
    reasons.reply_reason(550, text)


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
