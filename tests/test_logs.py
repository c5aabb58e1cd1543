"""
Tests for L{trackermail.logs}: the text log observer twistd runs the
tracker with writes exactly what twistd's own would.
"""

from __future__ import annotations

import io
import sys

from twisted.application import service
from twisted.logger import ILogObserver, Logger, LogLevel, textFileLogObserver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from trackermail.logs import TextLogObserver, twistd_observer


class _Thing:
    name = "thing-name"


def _events() -> list[dict]:
    base = {"log_namespace": "trackermail.ingress.smtp", "log_level": LogLevel.info,
            "log_time": 1795000000.25}
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    return [
        dict(base, log_format="queued {queue_id} {msgid} for {rcpts} ({size} bytes)",
             queue_id="6B0F", msgid="<a@b>", rcpts=["control@t"], size=117),
        dict(base, log_format="{thing.name} at {n:.1f} {x!r}", thing=_Thing(), n=2.25, x="q"),
        dict(base, log_format="called {f()}", f=lambda: "back"),
        dict(base, log_format="missing {nothere}"),
        dict(base, log_format="two\nlines {a}", a="here"),
        dict(base, log_format="with system", log_system="-"),
        dict(base, log_format="no time", log_time=None),
        dict(base, log_format="", empty=True),
        dict(base, log_format="it broke {what}", what="x", log_failure=failure),
        {"log_format": "bare {a}", "a": 1},
    ]


class TextLogObserverTests(SynchronousTestCase):
    def test_same_text_as_twistd(self):
        """
        Every kind of event, down to tracebacks, call syntax, a missing key
        and a continuation line, is written as textFileLogObserver writes it.
        """
        for event in _events():
            ours, theirs = io.StringIO(), io.StringIO()
            TextLogObserver(ours)(dict(event))
            textFileLogObserver(theirs)(dict(event))
            self.assertEqual(ours.getvalue(), theirs.getvalue(), event.get("log_format"))

    def test_second_changes(self):
        """The timestamp follows the event's time across seconds."""
        out, theirs = io.StringIO(), io.StringIO()
        observer, reference = TextLogObserver(out), textFileLogObserver(theirs)
        for when in (1795000000.1, 1795000000.9, 1795000001.0, 1795003600.5):
            event = {"log_format": "tick", "log_namespace": "n", "log_level": LogLevel.warn,
                     "log_time": when}
            observer(dict(event))
            reference(dict(event))
        self.assertEqual(out.getvalue(), theirs.getvalue())
        self.assertEqual(len(set(line[:24] for line in out.getvalue().splitlines())), 3)

    def test_through_a_logger(self):
        """A Logger's line reads: time, [namespace#level], text."""
        out = io.StringIO()
        log = Logger(namespace="trackermail.test", observer=TextLogObserver(out))
        log.info("processed {queue_id}: {action}", queue_id="Q1", action="replied")
        line = out.getvalue()
        self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} "
                               r"\[trackermail\.test#info\] processed Q1: replied\n$")


class TwistdObserverTests(SynchronousTestCase):
    def test_standard_output_runs(self):
        """-n without --logfile (or with --logfile -) logs to stdout through ours."""
        for options in ({"nodaemon": True, "logfile": ""}, {"nodaemon": True, "logfile": "-"}):
            observer = twistd_observer(options)
            self.assertIsInstance(observer, TextLogObserver)
            self.assertIs(observer._outFile, sys.stdout)

    def test_other_destinations_stay_twistds(self):
        """Log files (rotation), syslog, --logger and daemons keep twistd's observer."""
        for options in ({"nodaemon": True, "logfile": "/var/log/t.log"},
                        {"nodaemon": True, "logfile": "", "syslog": True},
                        {"nodaemon": True, "logfile": "", "logger": "x.y"},
                        {"nodaemon": False, "logfile": ""}):
            self.assertIsNone(twistd_observer(options), options)

    def test_given_to_the_application(self):
        """
        The tracker service hands its observer to the application twistd
        made, where twistd looks for one, unless the application has one.
        """
        from trackermail.service import TrackerService

        application = service.Application("tracker")
        top = TrackerService()
        observer = TextLogObserver(io.StringIO())
        top.log_observer = observer
        top.setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), observer)

        other = service.Application("tracker")
        own = TextLogObserver(io.StringIO())
        other.setComponent(ILogObserver, own)
        top = TrackerService()
        top.log_observer = observer
        top.setServiceParent(other)
        self.assertIs(other.getComponent(ILogObserver), own)
