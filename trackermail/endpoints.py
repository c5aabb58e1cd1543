# -*- test-case-name: tests.test_service -*-
"""
Listening services for the endpoint strings of the configuration.

Each one logs the address it really listens on (the port a C{tcp:0}
endpoint was given, the path of a UNIX socket), and offers
L{ListeningService.when_listening}, so tools and tests find a tracker's
ports without guessing free ones.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

log = Logger()


def describe_address(address: Any) -> str:
    """C{127.0.0.1:2525}, C{[::1]:2525} or a UNIX socket's path."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return str(name or address)


class ListeningService(StreamServerEndpointService):
    """
    A named service listening on one endpoint string.

    A failure to listen (port in use, permission denied, a bad endpoint)
    raises from C{startService}, as C{strports.service} does, so that the
    tracker does not run without one of its doors.
    """

    _raiseSynchronously = True

    def __init__(self, kind: str, description: str, factory: Any, reactor: Any):
        super().__init__(serverFromString(reactor, description), factory)
        self.kind = kind
        self.description = description
        self.setName(f"{kind}:{description}")
        self._listening: Any = None
        self._waiters: list[Deferred] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._waitingForPort.addCallback(self._listening_on)

    def _listening_on(self, port: Any) -> Any:
        self._listening = port
        log.info("{kind} listening on {address} ({description})", kind=self.kind,
                 address=describe_address(port.getHost()), description=self.description)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(port)
        return port

    def when_listening(self) -> Deferred:
        """A Deferred firing with the listening port (C{getHost()} tells its address)."""
        if self._listening is not None:
            return defer.succeed(self._listening)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d
