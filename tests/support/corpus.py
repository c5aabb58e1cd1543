"""
The labelled bounce corpus, for the tests that read it.

The corpus is found only through C{TRACKERMAIL_BOUNCE_CORPUS}: the folder
holding C{labels.jsonl} and C{messages/}. When the variable is unset, or
names a folder without them, the tests that need it skip with the reason;
under C{TRACKERMAIL_TEST_DATA_REQUIRED=1} (CI) they fail instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.trial.unittest import SkipTest

CORPUS_VARIABLE = "TRACKERMAIL_BOUNCE_CORPUS"
REQUIRED_VARIABLE = "TRACKERMAIL_TEST_DATA_REQUIRED"


def bounce_corpus() -> Path:
    """
    The corpus folder. Raises C{SkipTest}, or C{AssertionError} when test
    data is required, when it is not available.
    """
    root = os.environ.get(CORPUS_VARIABLE, "").strip()
    if not root:
        _unavailable(f"{CORPUS_VARIABLE} is not set (the folder holding labels.jsonl"
                     " and messages/ of the labelled bounce corpus)")
    path = Path(root)
    if not (path / "labels.jsonl").is_file() or not (path / "messages").is_dir():
        _unavailable(f"{CORPUS_VARIABLE}={root} does not hold labels.jsonl and messages/")
    return path


def corpus_labels() -> list[dict]:
    """
    The corpus labels, one dict per message, with C{"path"} added: the
    message file's full path.
    """
    root = bounce_corpus()
    labels = []
    with (root / "labels.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                label = json.loads(line)
                label["path"] = root / label["file"]
                labels.append(label)
    return labels


def corpus_message(name: str) -> Path:
    """
    The path of message C{name} (C{"soe-lhost-exim-02.eml"}) of the corpus.
    """
    path = bounce_corpus() / "messages" / name
    if not path.is_file():
        _unavailable(f"the bounce corpus has no message {name}")
    return path


def _unavailable(reason: str):
    if os.environ.get(REQUIRED_VARIABLE) == "1":
        raise AssertionError(f"{REQUIRED_VARIABLE}=1 but {reason}")
    raise SkipTest(reason)
