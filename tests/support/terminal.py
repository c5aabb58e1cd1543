"""
Running a command with its standard error on a terminal (a pseudo
terminal), to see what a person at a terminal sees (progress bars).
"""

from __future__ import annotations

import os
from typing import Callable


def on_terminal(run: Callable[[int], object]) -> tuple[object, bytes]:
    """
    Call C{run(fd)} with C{fd} the slave end of a new pseudo terminal (to
    pass as stderr); return its result and everything written there.
    """
    master, slave = os.openpty()
    try:
        result = run(slave)
        os.close(slave)
        slave = None
        output = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    return result, output
