"""
Whole trackers for tests: in this process (L{start_tracker}, for trial
C{async def} tests) or as a C{twistd} child (L{TrackerProcess}, for crash
tests that SIGKILL it).

Both listen on port 0 and learn their ports from the tracker itself, and
both take configuration overrides as the TOML sections would:
C{start_tracker(self, outbound={"connections": 2})}.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from twisted.internet import reactor

from tests.support.net import announced_ports, listen_local, wait_until
from tests.support.outbound import SinkFactory
from trackermail.config import config_from_dict

FQDN = "tracker.example.org"
SECRET = "s" * 40
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def tracker_config(base: str, **sections: dict) -> dict:
    """The TOML sections of a test tracker in directory C{base}."""
    raw: dict = {
        "tracker": {"fqdn": FQDN, "secret_key": SECRET},
        "spool": {"path": os.path.join(base, "spool"), "rescan_interval": 5},
        "database": {"url": f"sqlite:///{base}/tracker.sqlite"},
        "smtp": {"listen": []},
        "lmtp": {"listen": ["tcp:0:interface=127.0.0.1"]},
        "outbound": {"enabled": False},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


@dataclass
class Tracker:
    """A started in-process tracker and what tests reach it by."""

    top: Any
    config: Any
    store: Any
    base: str
    ports: dict
    sink: Any = None

    def service(self, name: str) -> Any:
        return self.top.getServiceNamed(name)


async def start_tracker(testcase, sink: bool = False, base: str | None = None,
                        **sections: dict) -> Tracker:
    """
    Build and start a whole tracker (stopped at cleanup) in directory
    C{base} (a new one by default). With C{sink}, its smarthost is an
    in-memory SMTP sink (C{tracker.sink.messages}).
    """
    from trackermail.service import buildService

    if base is None:
        base = os.path.abspath(testcase.mktemp())
    os.makedirs(base, exist_ok=True)
    sink_factory = None
    if sink:
        sink_factory = SinkFactory()
        port = listen_local(testcase, sink_factory)
        outbound = {"enabled": True, "smarthost": f"127.0.0.1:{port}",
                    "connections": 2, "retry_initial": 1}
        outbound.update(sections.pop("outbound", {}))
        sections["outbound"] = outbound
    config = config_from_dict(tracker_config(base, **sections))
    top = buildService(config, reactor)
    top.startService()
    testcase.addCleanup(top.stopService)
    ports = {}
    for svc in top:
        when_listening = getattr(svc, "when_listening", None)
        if when_listening is not None:
            listening = await when_listening()
            ports[svc.kind] = listening.getHost().port
    store_service = top.getServiceNamed("store")
    await store_service.when_ready()
    return Tracker(top, config, store_service.store, base, ports, sink_factory)


def write_toml(path: str, raw: dict) -> None:
    """Write TOML sections of strings, numbers, booleans and lists of strings."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    with open(path, "w", encoding="utf-8") as f:
        for section, values in raw.items():
            f.write(f"[{section}]\n")
            for key, v in values.items():
                f.write(f"{key} = {value(v)}\n")


class TrackerProcess:
    """
    A tracker run by C{twistd -n tracker} in its own directory, for tests
    that kill it. C{ports} are read from its log once it listens.
    """

    def __init__(self, testcase, **sections: dict):
        self.testcase = testcase
        self.dir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.dir)
        self.raw = tracker_config(self.dir, **sections)
        self.config = os.path.join(self.dir, "tracker.toml")
        write_toml(self.config, self.raw)
        self.log_path = os.path.join(self.dir, "twistd.log")
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """Run C{trackermail --config THIS ARGS...} and check it succeeds."""
        return subprocess.run([sys.executable, "-m", "trackermail.cli", "--config",
                               self.config, *args], check=True, capture_output=True,
                              timeout=120, cwd=self.dir)

    def start(self, timeout: float = 60) -> None:
        with open(self.log_path, "ab") as log:
            log.write(b"--- start\n")
        offset = os.path.getsize(self.log_path)
        log = open(self.log_path, "ab")
        self.testcase.addCleanup(log.close)
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "tracker", "--config", self.config],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        self.testcase.addCleanup(self.stop)
        wanted = {kind for kind in ("smtp", "lmtp", "http") if self.raw.get(kind, {}).get("listen")}

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"twistd exited with {self.proc.returncode}:\n"
                                     + self.log()[-3000:])
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                f.seek(offset)
                found = announced_ports(f.read())
            return found if wanted <= set(found) else None

        self.ports = wait_until(listening, timeout, "the tracker to listen")

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def kill(self) -> None:
        """SIGKILL: no cleanup, no flushing, as a crash or power cut would."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
