"""
The bounce analyzer against the labelled bounce corpus (found through
C{TRACKERMAIL_BOUNCE_CORPUS}; skipped without it): floors for detection,
recipients, hard/soft and reasons, computed in-process the way the corpus's
scorer computes them.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.support.corpus import corpus_labels
from trackermail.bounces.analyzer import detect


def _address(value) -> str:
    return str(value or "").strip().strip("<>").lower()


def _score(labels: list[dict]) -> dict:
    counts = dict.fromkeys(
        ("tp", "fp", "fn", "rcpt", "rcpt_found", "hard", "hard_ok", "reason", "reason_ok"), 0)
    for label in labels:
        analysis = detect(label["path"].read_bytes())
        found = analysis.probable()
        if not label["is_bounce"]:
            counts["fp"] += found
            continue
        counts["tp" if found else "fn"] += 1
        ours = {r.address.lower(): r for r in analysis.recipients} if found else {}
        for wanted in label["recipients"]:
            forms = {_address(wanted["address"])} | {_address(a) for a in wanted.get("alt") or []}
            match = next((ours[f] for f in forms if f in ours), None)
            counts["rcpt"] += 1
            counts["rcpt_found"] += match is not None
            if wanted.get("reason") and wanted["reason"] != "undefined":
                counts["reason"] += 1
                counts["reason_ok"] += match is not None and match.reason == wanted["reason"]
        if label.get("hard") is not None and found and analysis.hard is not None:
            counts["hard"] += 1
            counts["hard_ok"] += analysis.hard == label["hard"]
    return counts


_CACHE: dict = {}


class CorpusScoreTests(SynchronousTestCase):
    """
    Scores on the labelled corpus stay above their floors.
    """

    def counts_(self) -> dict:
        # Scored once for all the tests: analysing the corpus takes a while.
        if "counts" not in _CACHE:
            _CACHE["counts"] = _score(corpus_labels())
        return _CACHE["counts"]

    def test_detection(self):
        """Bounces are told from other automatic mail: precision 0.99, recall 0.95."""
        c = self.counts_()
        self.assertGreaterEqual(c["tp"], 0.99 * (c["tp"] + c["fp"]))
        self.assertGreaterEqual(c["tp"], 0.95 * (c["tp"] + c["fn"]))

    def test_recipients(self):
        """At least 93% of the labelled failed recipients are found."""
        c = self.counts_()
        self.assertGreaterEqual(c["rcpt_found"], 0.93 * c["rcpt"])

    def test_hard_soft(self):
        """Hard or soft agrees with the label for at least 92% of the bounces."""
        c = self.counts_()
        self.assertGreaterEqual(c["hard_ok"], 0.92 * c["hard"])

    def test_reasons(self):
        """The reason agrees with Sisimai's for at least 90% of the labelled recipients."""
        c = self.counts_()
        self.assertGreater(c["reason"], 0)
        self.assertGreaterEqual(c["reason_ok"], 0.90 * c["reason"],
                                "%(reason_ok)d of %(reason)d" % c)
