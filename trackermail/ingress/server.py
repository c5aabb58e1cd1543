# -*- test-case-name: tests.ingress.test_limits -*-
"""
What the ESMTP and LMTP servers share besides the protocol: their settings
(from a Config), the factory that counts connections and refuses the ones
over the limits, the checks of MAIL's parameters, the server TLS context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger

from trackermail.config import LimitsSection
from trackermail.errors import ConfigError

log = Logger()

#: Share of C{max_connections} in use from which idle clients get the short
#: timeout: under a flood of idle connections the slots go to clients that
#: talk.
STRESS_SHARE = 0.8


@dataclass
class IngressSettings:
    """What a server needs to know; held by the factory."""

    fqdn: str
    accept_unqualified: bool
    max_message_size: int
    spool: Any
    reactor: Any
    tls_context: Any = None
    # The [limits] defaults, from the one place they are set.
    timeout: float = LimitsSection.idle_timeout
    stress_timeout: float = 10
    max_connections: int = LimitsSection.max_connections
    max_connections_per_ip: int = LimitsSection.max_connections_per_ip
    max_recipients: int = LimitsSection.max_recipients
    transaction_time: float = LimitsSection.transaction_time
    min_data_rate: int = LimitsSection.min_data_rate
    data_rate_grace: float = 30
    #: Free space the spool must keep beyond the announced size of a message.
    space_margin: int = 1024 * 1024

    def __post_init__(self):
        self.fqdn = self.fqdn.lower()


class IngressFactory(protocol.ServerFactory):
    """
    Builds one protocol per connection around shared L{IngressSettings}, and
    counts the connections in total and per client address.
    """

    protocol: Any = None

    def __init__(self, settings: IngressSettings):
        self.settings = settings
        self.connections = 0
        self.per_client: dict[str, int] = {}
        self.protocols: set = set()

    def buildProtocol(self, addr: Any) -> Any:
        p = self.protocol(self.settings)
        p.factory = self
        return p

    def admit(self, client: str) -> str | None:
        """
        Count a new connection from C{client}; None when it may stay, else
        why it must be refused (and then it is not counted).
        """
        s = self.settings
        if s.max_connections and self.connections >= s.max_connections:
            return "too many connections"
        if s.max_connections_per_ip and self.per_client.get(client, 0) >= s.max_connections_per_ip:
            return "too many connections from your address"
        self.connections += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        if self.stressed:
            # Under a flood of connections the idle ones make room: they get
            # the short timeout from now on, as new and talking ones do.
            for p in list(self.protocols):
                p.shorten_idle_timeout()
        return None

    def release(self, client: str) -> None:
        self.connections -= 1
        left = self.per_client.get(client, 1) - 1
        if left > 0:
            self.per_client[client] = left
        else:
            self.per_client.pop(client, None)

    @property
    def stressed(self) -> bool:
        limit = self.settings.max_connections
        return bool(limit) and self.connections >= STRESS_SHARE * limit


def mail_parameters(opts: bytes | None, max_size: int) -> tuple[tuple[int, bytes] | None, int]:
    """
    Check the parameters of MAIL FROM (SIZE, BODY): C{(refusal, announced
    size)}, where C{refusal} is the reply to send, or None when they are fine.
    """
    announced = 0
    for word in (opts or b"").split():
        key_bytes, _, value_bytes = word.partition(b"=")
        try:
            key, value = key_bytes.decode("ascii").upper(), value_bytes.decode("ascii")
        except UnicodeDecodeError:
            return (555, b"5.5.4 Error: bad parameter"), 0
        if key == "SIZE":
            if not value.isdigit():
                return (501, b"5.5.4 Bad SIZE parameter"), 0
            announced = int(value)
            if announced > max_size:
                return (552, b"5.3.4 Message size exceeds fixed limit"), 0
        elif key == "BODY":
            if value.upper() not in ("7BIT", "8BITMIME"):
                return (501, b"5.5.4 Bad BODY parameter"), 0
        else:
            return (555, b"5.5.4 Unsupported option: " + key.encode("ascii")), 0
    return None, announced


def tls_context_from_files(certificate: str, key: str) -> Any:
    """
    A server TLS context from PEM files, or None when either is empty.

    @raise ConfigError: a file cannot be read or does not hold PEM data.
    """
    if not certificate or not key:
        return None
    from twisted.internet import ssl

    try:
        with open(certificate, "rb") as f:
            cert_pem = f.read()
        with open(key, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise ConfigError(f"[smtp] tls_certificate: cannot read {e.filename}: {e.strerror}")
    try:
        return ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem).options()
    except Exception as e:
        raise ConfigError(f"[smtp] tls_certificate: not a usable certificate and key: {e}")


def settings_from_config(config: Any, spool: Any, reactor: Any, tls: bool) -> IngressSettings:
    tls_context = None
    if tls:
        tls_context = tls_context_from_files(config.smtp.tls_certificate, config.smtp.tls_key)
    limits = config.limits
    return IngressSettings(
        fqdn=config.tracker.fqdn,
        accept_unqualified=config.tracker.accept_unqualified,
        max_message_size=limits.max_message_size,
        spool=spool,
        reactor=reactor,
        tls_context=tls_context,
        timeout=limits.idle_timeout,
        max_connections=limits.max_connections,
        max_connections_per_ip=limits.max_connections_per_ip,
        max_recipients=limits.max_recipients,
        transaction_time=limits.transaction_time,
        min_data_rate=limits.min_data_rate,
    )
