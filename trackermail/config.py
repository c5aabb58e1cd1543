# -*- test-case-name: tests.test_config -*-
"""
One typed configuration, loaded from TOML.

Nothing else in trackermail reads TOML or command-line options: the twistd
plugin and the admin CLI build a L{Config} here (file values, then option
overrides) and hand it down. Every validation error names its key, e.g.
C{[smtp] listen: expected a list of endpoint strings}.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import secrets
import socket
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from trackermail.errors import ConfigError


@dataclass(frozen=True)
class TrackerSection:
    fqdn: str = ""
    vendor: str = "generic"
    secret_key: str = ""
    accept_unqualified: bool = False
    # Where bounce notices are copied and what `help` tells people to write to.
    contact: str = ""
    dev: bool = False
    # This node's name among nodes sharing a database; it must stay the same
    # across restarts (see Config.node).
    node: str = ""

    @property
    def contact_address(self) -> str:
        return self.contact or f"owner@{self.fqdn}"


@dataclass(frozen=True)
class SpoolSection:
    path: str = "var/spool"
    concurrency: int = 8
    rescan_interval: int = 60
    fsync: bool = True


@dataclass(frozen=True)
class DatabaseSection:
    url: str = "sqlite:///var/tracker.sqlite"
    pool_size: int = 4
    prepared_statements: bool = True


@dataclass(frozen=True)
class SMTPSection:
    listen: tuple[str, ...] = ("tcp:2525:interface=127.0.0.1",)
    tls_certificate: str = ""
    tls_key: str = ""


@dataclass(frozen=True)
class LMTPSection:
    listen: tuple[str, ...] = ("tcp:2424:interface=127.0.0.1",)


@dataclass(frozen=True)
class OutboundSection:
    smarthost: str = "127.0.0.1:25"
    connections: int = 8
    starttls: str = "no"  # no | opportunistic | required
    ca_file: str = ""
    username: str = ""
    password: str = ""
    helo: str = ""
    batch_size: int = 2000
    retry_initial: int = 60
    retry_max: int = 3600
    give_up_days: float = 5.0
    idle_timeout: int = 60
    # Seconds a node holds a claimed delivery without renewing it; another
    # node takes a dead node's deliveries over when it runs out.
    lease: float = 30.0
    enabled: bool = True

    @property
    def host(self) -> str:
        return self.smarthost.rpartition(":")[0] or self.smarthost

    @property
    def port(self) -> int:
        _, sep, port = self.smarthost.rpartition(":")
        return int(port) if sep else 25


@dataclass(frozen=True)
class LimitsSection:
    max_message_size: int = 25 * 1024 * 1024
    # SMTP and LMTP: connections over these get 421 at once.
    max_connections: int = 200
    max_connections_per_ip: int = 50
    max_recipients: int = 1000
    # Seconds a client may stay silent between commands (10 s when 80% of
    # max_connections are taken), a whole transaction may last (MAIL to the
    # final dot), and the slowest average data rate (bytes/s) after 30 s.
    idle_timeout: int = 300
    transaction_time: int = 600
    min_data_rate: int = 1024


@dataclass(frozen=True)
class BouncesSection:
    max_days_tolerate_bounce: int = 4
    # Mail days of nothing but bounces (mailbox full, ...) before unsubscription.
    max_days_tolerate_soft: int = 14
    # "YYYY-MM-DD": until then, count bounces to distro-tracker's VERP addresses.
    legacy_verp_until: str = ""


@dataclass(frozen=True)
class ControlSection:
    confirmation_expiry_days: int = 3
    # Mails a day to one address (user+x@ counts as user@) that it may not
    # have asked for: CONFIRM mails and notices.
    max_confirmations_per_day: int = 3
    # Replies a day to one sender (user+x@ counts as user@); 0: no cap.
    max_replies_per_day: int = 5


@dataclass(frozen=True)
class HTTPSection:
    listen: tuple[str, ...] = ()
    public_url: str = ""


@dataclass(frozen=True)
class Config:
    tracker: TrackerSection = field(default_factory=TrackerSection)
    spool: SpoolSection = field(default_factory=SpoolSection)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    smtp: SMTPSection = field(default_factory=SMTPSection)
    lmtp: LMTPSection = field(default_factory=LMTPSection)
    outbound: OutboundSection = field(default_factory=OutboundSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    bounces: BouncesSection = field(default_factory=BouncesSection)
    control: ControlSection = field(default_factory=ControlSection)
    http: HTTPSection = field(default_factory=HTTPSection)

    @property
    def fqdn(self) -> str:
        return self.tracker.fqdn

    @property
    def node(self) -> str:
        """
        C{[tracker] node}, by default the host name and the spool's absolute
        path (C{host:/var/spool/trackermail}): stable across restarts, and
        different for every tracker on a host.
        """
        return self.tracker.node or f"{socket.gethostname()}:{os.path.abspath(self.spool.path)}"

    def replace(self, **overrides: Mapping[str, Any]) -> "Config":
        """
        Return a copy with some keys changed: C{replace(tracker={"fqdn": x})}.
        Values are validated like file values.
        """
        raw: dict[str, dict[str, Any]] = {
            f.name: dataclasses.asdict(getattr(self, f.name)) for f in fields(self)
        }
        for section, values in overrides.items():
            raw.setdefault(section, {}).update(values)
        return config_from_dict(raw, require_fqdn=False, warn=lambda msg: None)


_SECTIONS = {f.name: f.type for f in fields(Config)}
_SECTION_CLASSES = {
    "tracker": TrackerSection,
    "spool": SpoolSection,
    "database": DatabaseSection,
    "smtp": SMTPSection,
    "lmtp": LMTPSection,
    "outbound": OutboundSection,
    "limits": LimitsSection,
    "bounces": BouncesSection,
    "control": ControlSection,
    "http": HTTPSection,
}


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    where = f"[{section}] {key}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{where}: must not be negative, got {value}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) for v in value
        ):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    if isinstance(default, str):
        if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
            # A bare TOML date (legacy_verp_until = 2026-12-01).
            return value.isoformat()
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported value {value!r}")  # pragma: no cover


def _check(config: Config, require_fqdn: bool) -> None:
    t = config.tracker
    if require_fqdn and not t.fqdn:
        raise ConfigError("[tracker] fqdn: required (the domain the tracker receives mail for)")
    if t.fqdn and ("@" in t.fqdn or " " in t.fqdn or "." not in t.fqdn):
        raise ConfigError(f"[tracker] fqdn: not a domain name: {t.fqdn!r}")
    if t.vendor not in ("generic", "debian"):
        raise ConfigError(f"[tracker] vendor: unknown vendor {t.vendor!r} (generic, debian)")
    url = config.database.url
    if not (url.startswith("sqlite:///") or url.startswith("postgresql://")
            or url.startswith("postgres://")):
        raise ConfigError(
            f"[database] url: expected sqlite:///PATH or postgresql://..., got {url!r}"
        )
    if config.outbound.starttls not in ("no", "opportunistic", "required"):
        raise ConfigError(
            "[outbound] starttls: expected no, opportunistic or required, "
            f"got {config.outbound.starttls!r}"
        )
    host, sep, port = config.outbound.smarthost.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"[outbound] smarthost: expected host:port, got {config.outbound.smarthost!r}"
        )
    if config.outbound.connections < 1:
        raise ConfigError("[outbound] connections: must be at least 1")
    if config.outbound.lease < 1:
        raise ConfigError("[outbound] lease: must be at least 1 (seconds)")
    if config.spool.concurrency < 1:
        raise ConfigError("[spool] concurrency: must be at least 1")
    if bool(config.smtp.tls_certificate) != bool(config.smtp.tls_key):
        raise ConfigError("[smtp] tls_certificate: needs tls_key too (and the other way round)")
    if config.bounces.max_days_tolerate_bounce < 1:
        raise ConfigError("[bounces] max_days_tolerate_bounce: must be at least 1")
    if config.bounces.max_days_tolerate_soft < 1:
        raise ConfigError("[bounces] max_days_tolerate_soft: must be at least 1")
    until = config.bounces.legacy_verp_until
    if until:
        try:
            datetime.date.fromisoformat(until)
        except ValueError:
            raise ConfigError(
                f"[bounces] legacy_verp_until: expected a date YYYY-MM-DD, got {until!r}"
            ) from None


def config_from_dict(
    raw: Mapping[str, Any], require_fqdn: bool = True, warn=None
) -> Config:
    """
    Build a validated L{Config} from a parsed TOML document.
    """
    sections = {}
    for name, values in raw.items():
        if name not in _SECTION_CLASSES:
            raise ConfigError(f"[{name}]: unknown section")
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{name}]: expected a table")
        cls = _SECTION_CLASSES[name]
        defaults = cls()
        kwargs = {}
        known = {f.name for f in fields(cls)}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"[{name}] {key}: unknown key")
            kwargs[key] = _coerce(name, key, value, getattr(defaults, key))
        sections[name] = cls(**kwargs)
    config = Config(**sections)
    _check(config, require_fqdn)
    if not config.tracker.secret_key:
        if require_fqdn and not config.tracker.dev:
            raise ConfigError(
                "[tracker] secret_key: required (set dev = true to generate one per run)"
            )
        key = secrets.token_hex(32)
        if warn is not None:
            warn("[tracker] secret_key is empty: generated a random one for this run;"
                 " signed addresses will not survive a restart")
        config = dataclasses.replace(
            config, tracker=dataclasses.replace(config.tracker, secret_key=key)
        )
    return config


def load_config(path: str | None, overrides: Mapping[str, Mapping[str, Any]] = {},
                require_fqdn: bool = True, warn=None) -> Config:
    """
    Load C{path} (TOML) and apply C{overrides} (section -> key -> value), then
    validate. C{path=None} means defaults only.

    @raise ConfigError: with a one-line message naming the file or key.
    """
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file")
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}")
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}")
    for section, values in overrides.items():
        if not values:
            continue
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"[{section}]: expected a table")
        target.update(values)
    return config_from_dict(raw, require_fqdn=require_fqdn, warn=warn)


# ---------------------------------------------------------------------------
# Finding the file, and checks only a running tracker needs.

CONFIG_ENVIRONMENT = "TRACKERMAIL_CONFIG"
DEFAULT_CONFIG_FILE = "tracker.toml"


def find_config(explicit: str | None, environ: Mapping[str, str] | None = None,
                cwd: str | None = None) -> str | None:
    """
    The configuration file to read, the same way for C{trackermail},
    C{twistd -n tracker} and C{tracker.tac}: C{--config} (C{explicit}),
    else C{$TRACKERMAIL_CONFIG}, else C{./tracker.toml} when it exists,
    else None (built-in defaults).

    A file named by the option or the variable must exist; L{load_config}
    says so when it does not.
    """
    if explicit:
        return explicit
    environ = os.environ if environ is None else environ
    named = environ.get(CONFIG_ENVIRONMENT, "")
    if named:
        return named
    local = DEFAULT_CONFIG_FILE if cwd is None else os.path.join(cwd, DEFAULT_CONFIG_FILE)
    return local if os.path.isfile(local) else None


class _NoReactor:
    """Endpoint parsers only store their reactor: parsing needs none."""


# Endpoint types whose port number Twisted only checks when it listens.
_PORT_RANGE = range(0, 65536)


def check_endpoints(config: Config) -> None:
    """
    Parse every listening endpoint string, so that a typo is a one-line
    error naming its key before anything starts, not a traceback later.

    @raise ConfigError: C{[smtp] listen: bad endpoint 'tcp:99999': ...}
    """
    from twisted.internet.endpoints import serverFromString

    for section in ("smtp", "lmtp", "http"):
        for description in getattr(config, section).listen:
            where = f"[{section}] listen: bad endpoint {description!r}"
            try:
                endpoint = serverFromString(_NoReactor(), description)
            except Exception as e:
                hint = ""
                if description.isdigit():
                    hint = f" (a port alone is not an endpoint: write tcp:{description})"
                raise ConfigError(f"{where}: {_reason(e)}{hint}")
            # TCP endpoints keep their port in _port; Twisted itself only
            # checks its range when it listens, with an OverflowError.
            port = getattr(endpoint, "_port", None)
            if isinstance(port, int) and port not in _PORT_RANGE:
                raise ConfigError(f"{where}: port {port} is not between 0 and 65535")


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        name = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{name}"
    return " ".join(str(error).split()) or type(error).__name__
