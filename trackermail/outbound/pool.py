# -*- test-case-name: tests.outbound.test_pool -*-
"""
A bounded pool of persistent, pipelining SMTP connections to one smarthost.

Sends wait in one queue; every connection that can start a transaction takes
the next one (with PIPELINING a connection takes the next while the previous
message's content is still being answered). Connections are opened when
there is more work than ready connections, up to C{connections}; they close
after C{idle_timeout} seconds without work and are reopened on demand.

When the smarthost cannot be reached (refused, TLS failure, bad credentials,
...) and no other connection is working, every queued send gets a 421 at
once, so the outbox can retry on its own schedule; further connection
attempts back off (1, 2, 4 ... 30 s), while new sends wait for the next one.
"""

from __future__ import annotations

import re
import socket
from collections import deque
from typing import Any, Optional, Sequence

from twisted.internet import ssl
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from trackermail.errors import ConfigError
from trackermail.outbound.connection import ClientSettings, SMTPConnection, Transaction
from trackermail.outbound.interface import CONNECT, LOCAL, IOutboundTransport, Reply

log = Logger()

SHUTTING_DOWN = Reply(421, "4.3.2 outbound connection pool is shutting down", LOCAL)

STARTTLS_MODES = ("no", "opportunistic", "required")
MAX_BACKOFF = 30.0

_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s.+?\s-----END CERTIFICATE-----", re.DOTALL)
_HELO = re.compile(r"^[A-Za-z0-9.\-\[\]:_]+$")


def load_trust_root(ca_file: str) -> Any:
    """
    Read every certificate of a PEM file (a private CA or a bundle) as a
    trust root for L{ssl.optionsForClientTLS}.

    @raise ConfigError: when the file cannot be read or holds no certificate.
    """
    try:
        with open(ca_file, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ConfigError(f"[outbound] ca_file: cannot read {ca_file}: {e.strerror}")
    blocks = _PEM_CERT.findall(pem)
    if not blocks:
        raise ConfigError(f"[outbound] ca_file: no PEM certificate in {ca_file}")
    try:
        certificates = [ssl.Certificate.loadPEM(block) for block in blocks]
    except Exception as e:
        raise ConfigError(f"[outbound] ca_file: bad certificate in {ca_file}: {e}")
    return ssl.trustRootFromCertificates(certificates)


class _ConnectionFactory(Factory):
    def __init__(self, pool: "SMTPPool"):
        self.pool = pool

    def buildProtocol(self, addr: Any) -> SMTPConnection:
        return self.pool._build_connection()


@implementer(IOutboundTransport)
class SMTPPool:
    """
    L{IOutboundTransport} over up to C{connections} SMTP sessions.

    @param endpoint: a client endpoint to use instead of
        C{HostnameEndpoint(reactor, host, port)} (tests); C{host} is still
        the name the TLS certificate must match.
    @param max_transactions: QUIT and reconnect after that many transactions
        on one connection (0: never).
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        connections: int = 8,
        starttls: str = "no",
        ca_file: str = "",
        username: str = "",
        password: str = "",
        helo: Optional[str] = None,
        idle_timeout: float = 60,
        timeout: float = 120,
        max_transactions: int = 0,
        endpoint: Any = None,
        tls_options: Any = None,
    ):
        if starttls not in STARTTLS_MODES:
            raise ConfigError(
                f"[outbound] starttls: expected no, opportunistic or required, got {starttls!r}")
        if connections < 1:
            raise ConfigError("[outbound] connections: must be at least 1")
        helo = helo or socket.getfqdn()
        if not _HELO.match(helo) or not helo.isascii():
            raise ConfigError(f"[outbound] helo: not a host name: {helo!r}")
        if starttls != "no" and tls_options is None:
            trust = load_trust_root(ca_file) if ca_file else ssl.platformTrust()
            tls_options = ssl.optionsForClientTLS(host, trustRoot=trust)
        self._reactor = reactor
        self.host = host
        self.port = port
        self.connections = connections
        self._settings = ClientSettings(
            helo=helo,
            starttls=starttls,
            tls_options=tls_options,
            username=username,
            password=password,
            timeout=timeout,
            idle_timeout=idle_timeout,
            max_transactions=max_transactions,
            peer=f"{host}:{port}",
        )
        if endpoint is None:
            endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
        self._endpoint = endpoint
        self._factory = _ConnectionFactory(self)
        self._queue: deque[Transaction] = deque()
        self._conns: list[SMTPConnection] = []
        self._attempts: list[Deferred] = []
        self._failures = 0
        self._retry_call = None
        self._closing = False
        self._close_waiters: list[Deferred] = []

    # -- IOutboundTransport ----------------------------------------------

    def send(self, mail_from: str, recipients: Sequence[str], data: bytes) -> Deferred:
        if isinstance(recipients, str):
            recipients = [recipients]
        txn = Transaction(mail_from, recipients, data)
        if self._closing:
            txn.fail_all(SHUTTING_DOWN)
            return txn.deferred
        if not txn.recipients:
            return succeed({})
        self._queue.append(txn)
        self._dispatch()
        return txn.deferred

    def close(self) -> Deferred:
        self._closing = True
        if self._retry_call is not None:
            self._retry_call.cancel()
            self._retry_call = None
        self._fail_queue(SHUTTING_DOWN)
        for attempt in list(self._attempts):
            attempt.cancel()
        for conn in list(self._conns):
            conn.retire()
        d: Deferred = Deferred()
        self._close_waiters.append(d)
        self._check_closed()
        return d

    # -- state, for tests and the `outbox` status -------------------------

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # -- distribution -----------------------------------------------------

    def _dispatch(self) -> None:
        for conn in list(self._conns):
            if not self._queue:
                return
            if conn.can_accept():
                conn.take_work()
        if self._queue and len(self._attempts) + len(self._conns) < self.connections:
            self._maybe_connect()

    def _maybe_connect(self) -> None:
        if self._closing or self._retry_call is not None:
            return
        starting = len(self._attempts) + sum(1 for c in self._conns if c.state == "setup")
        total = len(self._attempts) + len(self._conns)
        if self._failures:
            # Probe with one connection until one works again.
            wanted = 0 if starting else 1
        else:
            wanted = len(self._queue) - starting
        wanted = min(wanted, self.connections - total)
        for _ in range(max(0, wanted)):
            self._connect()

    def _connect(self) -> None:
        d = self._endpoint.connect(self._factory)
        self._attempts.append(d)

        def done(result: Any) -> None:
            if d in self._attempts:
                self._attempts.remove(d)
            return None

        def failed(failure: Any) -> None:
            done(None)
            if self._closing:
                self._check_closed()
                return
            why = failure.getErrorMessage()
            log.warn("cannot connect to {peer}: {why}", peer=self._settings.peer, why=why)
            self._setup_failed(Reply(421, "4.4.1 cannot connect to {}: {}".format(
                self._settings.peer, why), CONNECT))

        d.addCallbacks(done, failed)

    def _build_connection(self) -> SMTPConnection:
        conn = SMTPConnection(self, self._settings, self._reactor)
        self._conns.append(conn)
        return conn

    def _setup_failed(self, result: Reply) -> None:
        self._failures += 1
        working = any(c.state != "setup" for c in self._conns)
        if not working and not self._attempts and not any(
                c.state == "setup" for c in self._conns):
            self._fail_queue(result)
        delay = min(2.0 ** (self._failures - 1), MAX_BACKOFF)
        if self._retry_call is None and not self._closing:
            self._retry_call = self._reactor.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._retry_call = None
        if self._queue:
            self._dispatch()

    def _fail_queue(self, result: Reply) -> None:
        queue = self._queue
        self._queue = deque()
        for txn in queue:
            txn.fail_all(result)

    def _check_closed(self) -> None:
        if self._closing and not self._conns and not self._attempts:
            waiters = self._close_waiters
            self._close_waiters = []
            for d in waiters:
                d.callback(None)

    # -- TransactionSource (called by SMTPConnection) ----------------------

    def next_transaction(self, conn: SMTPConnection) -> Optional[Transaction]:
        if self._queue:
            return self._queue.popleft()
        return None

    def connection_ready(self, conn: SMTPConnection) -> None:
        self._failures = 0
        if self._retry_call is not None:
            self._retry_call.cancel()
            self._retry_call = None
        if self._closing:
            conn.retire()

    def connection_failed(self, conn: SMTPConnection, result: Reply) -> None:
        if conn in self._conns:
            self._conns.remove(conn)
        if self._closing:
            self._check_closed()
            return
        self._setup_failed(result)

    def connection_closed(self, conn: SMTPConnection, requeue: list[Transaction]) -> None:
        if conn in self._conns:
            self._conns.remove(conn)
        if requeue:
            if self._closing:
                for txn in requeue:
                    txn.fail_all(SHUTTING_DOWN)
            else:
                self._queue.extendleft(reversed(requeue))
        if self._closing:
            self._check_closed()
        elif self._queue:
            self._dispatch()


def pool_from_config(outbound: Any, reactor: Any) -> SMTPPool:
    """
    Build the pool described by C{[outbound]} (a
    L{trackermail.config.OutboundSection}).
    """
    return SMTPPool(
        reactor,
        outbound.host,
        outbound.port,
        connections=outbound.connections,
        starttls=outbound.starttls,
        ca_file=outbound.ca_file,
        username=outbound.username,
        password=outbound.password,
        helo=outbound.helo or None,
        idle_timeout=outbound.idle_timeout,
    )
