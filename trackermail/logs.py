# -*- test-case-name: tests.test_logs -*-
"""
The text log twistd writes, at a fraction of its cost.

twistd's own observer formats every event with a pure-Python
C{string.Formatter} and computes the local time zone and timestamp anew
for each line: about a fifth of the CPU the tracker spends accepting a
message over LMTP, where it writes one line per message. L{TextLogObserver}
writes the same lines (C{TIME [namespace#level] text}, continuation lines
indented by a tab) with C{str.format_map} and one timestamp per second, and
hands any event it cannot format exactly so (tracebacks, call syntax in the
format, a missing key) to Twisted's formatter.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from zope.interface import implementer


class _SecondClock:
    """C{formatTime} with the text of the last second kept."""

    def __init__(self, time_format: str = timeFormatRFC3339):
        self.time_format = time_format
        self._second: int | None = None
        self._text = "-"

    def __call__(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != self._second:
            self._text = formatTime(second, self.time_format)
            self._second = second
        return self._text


def classic_text(clock: _SecondClock):
    """
    A C{formatEvent} for L{FileLogObserver}: the text of
    L{formatEventAsClassicLogText}, taking the quick way where it gives the
    same result.
    """

    def format_event(event: dict[str, Any]) -> str | None:
        fmt = event.get("log_format")
        if (type(fmt) is not str or "log_failure" in event or "log_flattened" in event
                or "()" in fmt):
            return formatEventAsClassicLogText(event, formatTime=clock)
        try:
            text = fmt.format_map(event)
        except Exception:
            return formatEventAsClassicLogText(event, formatTime=clock)
        if not text:
            return None
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
        else:
            try:
                system = str(system)
            except Exception:
                return formatEventAsClassicLogText(event, formatTime=clock)
        line = f"{clock(event.get('log_time'))} [{system}] {text}"
        return line.replace("\n", "\n\t") + "\n"

    return format_event


@implementer(ILogObserver)
class TextLogObserver(FileLogObserver):
    """Writes twistd's text log lines to C{out}."""

    def __init__(self, out: IO[str], time_format: str = timeFormatRFC3339):
        super().__init__(out, classic_text(_SecondClock(time_format)))


def twistd_observer(twistd_options) -> TextLogObserver | None:
    """
    The observer for a twistd run with C{twistd_options}, when it would log
    to standard output (C{-n} without C{--logfile}, or C{--logfile -}), as
    under systemd or C{make run}. None otherwise: log files (with their
    rotation), syslog and C{--logger} stay twistd's.
    """
    try:
        if twistd_options.get("logger") or twistd_options.get("syslog"):
            return None
        nodaemon = twistd_options.get("nodaemon", False)
        logfile = twistd_options.get("logfile", "") or ""
    except AttributeError:
        return None
    if nodaemon and logfile in ("", "-"):
        return TextLogObserver(sys.stdout)
    return None
