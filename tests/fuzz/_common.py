"""
Shared set-up of the atheris harnesses (not a test module: trial never
imports this directory, which has no __init__.py).
"""

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

FQDN = "tracker.example.org"
SECRET = "fuzz-secret-key-0123456789"


def text(fdp, limit=4096):
    """A str from the fuzzer's bytes, lone surrogates included."""
    return fdp.ConsumeUnicode(limit)
