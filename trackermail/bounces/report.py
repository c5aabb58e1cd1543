# -*- test-case-name: tests.bounces.test_report -*-
"""
C{trackermail analyze-bounce FILE...}: one JSON line per file.
"""

from __future__ import annotations

import json
from typing import Iterable, TextIO

from trackermail.bounces.analyzer import detect


def analyze_file(path: str) -> dict:
    """
    Analyse the message in file C{path}: the C{analyze-bounce} JSON record.
    Raises C{OSError} when the file cannot be read.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    analysis = detect(data)
    bounce = analysis.probable()
    return {
        "file": path,
        "bounce": bool(bounce),
        "score": round(float(analysis.score), 4),
        "hard": analysis.hard if bounce else None,
        "recipients": [r.address.lower() for r in analysis.recipients] if bounce else [],
        "status": analysis.status if bounce else None,
        "details": [_detail(r) for r in analysis.recipients] if bounce else [],
    }


def _detail(recipient) -> dict:
    return {
        "recipient": recipient.address.lower(),
        "status": recipient.status,
        "hard": recipient.hard,
        "reason": recipient.reason or "undefined",
        "remote_mta": recipient.remote_mta,
        "diagnostic": recipient.diagnostic,
    }


def analyze_bounce_main(paths: Iterable[str], out: TextIO) -> int:
    """
    C{trackermail analyze-bounce FILE...}: one JSON line per file on C{out}.
    Returns 0, or 1 when some file could not be read (its line carries an
    C{"error"} key instead of the analysis).
    """
    status = 0
    for path in paths:
        try:
            record = analyze_file(path)
        except OSError as e:
            status = 1
            record = {"file": path, "error": e.strerror or str(e)}
        except Exception as e:  # detect() does not raise; belt and braces.
            status = 1
            record = {"file": path, "error": "%s: %s" % (type(e).__name__, e)}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return status
