"""
Ports and polling for tests that use real sockets or processes.

  - L{listen_local}: listen on port 0 of 127.0.0.1 and ask C{getHost()}
    which port it got (no "free port" guessing, which races);
  - L{wait_until}: poll a condition in real time, for tests that drive
    other processes (a twistd child, Postfix);
  - L{poll}: the same inside the reactor, for C{async def} tests.
"""

from __future__ import annotations

import inspect
import re
import time
from typing import Any, Callable

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred


def listen_local(testcase, factory: Any) -> int:
    """Listen on 127.0.0.1 port 0 until the test ends; return the port number."""
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return port.getHost().port


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.05) -> Any:
    """Call C{predicate} until it is true (returned) or C{timeout} seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def poll(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.05) -> Any:
    """
    L{wait_until} without blocking the reactor; C{predicate} may also
    return a Deferred or a coroutine (e.g. a question to a store).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Deferred) or inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await task.deferLater(reactor, interval, lambda: None)


_LISTENING = re.compile(r"\b(smtp|lmtp|http) listening on (\S+):(\d+) ")


def announced_ports(log_text: str) -> dict[str, int]:
    """The ports a tracker's log says it listens on: C{{"lmtp": 40213, ...}}."""
    return {kind: int(port) for kind, _host, port in _LISTENING.findall(log_text)}


def unused_port() -> int:
    """
    A port nothing listens on right now: for a connection that must be
    refused, or a program that only takes a port number (Postfix,
    smtp-sink). Prefer L{listen_local} wherever a listener can be ours.
    """
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
