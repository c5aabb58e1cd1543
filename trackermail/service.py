# -*- test-case-name: tests.test_service -*-
"""
The tracker as a Twisted service: C{twistd -n tracker --config FILE} and
C{twistd -ny tracker.tac} both end up in L{buildService}.

Child services have stable names so that tests and tools can find them:
C{store}, C{spool}, C{smtp:N}, C{lmtp:N}, C{outbound}, C{http:N}.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, NoReturn

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from trackermail.bounces.policy import maintain as maintain_bounces
from trackermail.config import Config, check_endpoints, find_config, load_config
from trackermail.endpoints import ListeningService
from trackermail.errors import ConfigError
from trackermail.store.confirmations import purge_confirmations

log = Logger()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the trackermail mail engine: ESMTP and LMTP ingress, the durable "
        "spool and its processor, and the outbox sender. Options override the "
        "values of the configuration file."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: $TRACKERMAIL_CONFIG, "
                              "else ./tracker.toml if present, else built-in defaults)"],
        ["fqdn", None, None, "[tracker] fqdn: the domain the tracker receives mail for"],
        ["vendor", None, None, "[tracker] vendor: generic or debian"],
        ["database", None, None, "[database] url: sqlite:///PATH or postgresql://..."],
        ["spool", None, None, "[spool] path: the spool directory"],
        ["smarthost", None, None, "[outbound] smarthost: host:port to send mail through"],
    ]
    optFlags = [
        ["dev", None, "[tracker] dev: development mode (a random secret_key if none)"],
        ["no-outbound", None, "do not send mail (leave deliveries queued)"],
    ]

    def __init__(self):
        super().__init__()
        self["smtp"] = []
        self["lmtp"] = []
        self["http"] = []

    def opt_smtp(self, endpoint):
        """[smtp] listen: an endpoint string for ESMTP (repeatable)."""
        self["smtp"].append(endpoint)

    def opt_lmtp(self, endpoint):
        """[lmtp] listen: an endpoint string for LMTP (repeatable)."""
        self["lmtp"].append(endpoint)

    def opt_http(self, endpoint):
        """[http] listen: an endpoint string for the HTTP side (repeatable)."""
        self["http"].append(endpoint)

    def overrides(self) -> dict:
        tracker = {}
        if self["fqdn"]:
            tracker["fqdn"] = self["fqdn"]
        if self["vendor"]:
            tracker["vendor"] = self["vendor"]
        if self["dev"]:
            tracker["dev"] = True
        result = {"tracker": tracker}
        if self["database"]:
            result["database"] = {"url": self["database"]}
        if self["spool"]:
            result["spool"] = {"path": self["spool"]}
        outbound = {}
        if self["smarthost"]:
            outbound["smarthost"] = self["smarthost"]
        if self["no-outbound"]:
            outbound["enabled"] = False
        result["outbound"] = outbound
        for name in ("smtp", "lmtp", "http"):
            if self[name]:
                result[name] = {"listen": list(self[name])}
        return result

    def postOptions(self):
        # A configuration error is not a usage error: one line naming the
        # key, without twistd's page of usage in front of it.
        self.config = service_config(self["config"], self.overrides())


def _warn(message: str) -> None:
    sys.stderr.write(f"trackermail: warning: {message}\n")


def startup_error(message: str) -> NoReturn:
    """
    End a tracker that cannot start: one line on stderr, exit status 1.
    (SystemExit passes through twistd untouched, with no traceback.)
    """
    stream = sys.__stderr__ or sys.stderr
    stream.write("trackermail: " + " ".join(str(message).split()) + "\n")
    stream.flush()
    raise SystemExit(1)


def service_config(path: str | None = None,
                   overrides: Mapping[str, Mapping[str, Any]] = {}) -> Config:
    """
    The configuration of a running tracker (C{twistd -n tracker} and
    C{tracker.tac} alike): found by L{find_config}, overridden by options,
    endpoints checked. A bad one ends the process through L{startup_error}.
    """
    try:
        config = load_config(find_config(path), overrides, warn=_warn)
        check_endpoints(config)
    except ConfigError as e:
        startup_error(str(e))
    return config


class StoreService(service.Service):
    """
    Opens the store and brings its schema up to date when the tracker starts;
    closes it when it stops. L{when_ready} fires once the store can be used.
    """

    name = "store"

    def __init__(self, store):
        self.store = store
        self._ready: Deferred | None = None
        self._waiting: list[Deferred] = []
        self._is_ready = False

    def startService(self):
        super().startService()
        self._ready = Deferred.fromCoroutine(self._start())

    async def _start(self):
        while True:
            try:
                await self.store.start()
                version = await self.store.migrate()
            except Exception as e:
                log.error("store not ready ({error}); retrying in 5 s", error=str(e))
                from twisted.internet import reactor, task

                await task.deferLater(reactor, 5, lambda: None)
                if not self.running:
                    return
                continue
            log.info("store ready at schema version {version}", version=version)
            self._is_ready = True
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(self.store)
            return

    def when_ready(self) -> Deferred:
        if self._is_ready:
            from twisted.internet import defer

            return defer.succeed(self.store)
        d = Deferred()
        self._waiting.append(d)
        return d

    def stopService(self):
        super().stopService()
        return self.store.close()


class TrackerService(service.MultiService):
    """
    The whole tracker. Under twistd (L{exit_on_listen_error}) a door that
    cannot open ends the process with one line naming its key and endpoint,
    e.g. C{[smtp] listen: cannot listen on tcp:2525: Address already in
    use}; elsewhere the error is raised as it is.
    """

    exit_on_listen_error = False
    #: twistd's pid file, removed before such an exit (twistd would on an exception).
    pidfile: str | None = None
    #: The log observer to give the application (see L{trackermail.logs}).
    log_observer = None

    def setServiceParent(self, parent):
        super().setServiceParent(parent)
        # twistd asks the application for its log observer after the plugin
        # made it, and only uses its own when there is none.
        observer, self.log_observer = self.log_observer, None
        if observer is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            if parent.getComponent(ILogObserver, None) is None:
                parent.setComponent(ILogObserver, observer)

    def privilegedStartService(self):
        service.Service.privilegedStartService(self)
        for child in self:
            self._start_child(child.privilegedStartService, child)

    def startService(self):
        service.Service.startService(self)
        for child in self:
            self._start_child(child.startService, child)

    def _start_child(self, start, child) -> None:
        try:
            start()
        except Exception as e:
            if not (self.exit_on_listen_error and isinstance(child, ListeningService)):
                raise
            message = (f"[{child.kind}] listen: cannot listen on {child.description}: "
                       f"{listen_error_reason(e)}")
            log.error("{message}", message=message)
            if self.pidfile:
                _remove_own_pidfile(self.pidfile)
            startup_error(message)


def listen_error_reason(error: Exception) -> str:
    """C{Address already in use}, not Twisted's sentence around it."""
    socket_error = getattr(error, "socketError", None)
    if isinstance(socket_error, OSError) and socket_error.strerror:
        return socket_error.strerror
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return " ".join(str(error).split()) or type(error).__name__


def _remove_own_pidfile(path: str) -> None:
    try:
        with open(path) as f:
            pid = int(f.read().strip() or 0)
        if pid == os.getpid():
            os.remove(path)
    except (OSError, ValueError):
        pass


def buildService(config: Config, reactor=None) -> TrackerService:
    """
    The whole tracker for C{config}.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    from trackermail.store import open_store

    top = TrackerService()
    top.config = config
    store = open_store(config.database.url, reactor=reactor,
                       pool_size=config.database.pool_size,
                       prepared_statements=config.database.prepared_statements)
    store_service = StoreService(store)
    store_service.setServiceParent(top)
    for part in _PARTS:
        part(top, config, store_service, reactor)
    return top


def default_handlers() -> dict:
    """
    The routing table: service name -> handler (a store program). A service
    routed but missing here fails loudly: its mail goes to failed/.
    """
    from trackermail.bounces.policy import handle_bounces
    from trackermail.control.handler import handle_control
    from trackermail.dispatch import handle_dispatch, handle_team

    return {
        "control": handle_control,
        "dispatch": handle_dispatch,
        "team": handle_team,
        "bounces": handle_bounces,
    }


def build_processor(config: Config, store, reactor=None, ready=None):
    from trackermail.processing import Processor
    from trackermail.vendor import load_vendor

    return Processor(config, store, default_handlers(),
                     vendor=load_vendor(config.tracker.vendor), clock=reactor, ready=ready)


def _mail_engine(top, config: Config, store_service: StoreService, reactor) -> None:
    from trackermail.ingress.service import make_ingress_services, make_spool
    from trackermail.processing import SpoolWatcher

    spool = make_spool(config, reactor)
    processor = build_processor(config, store_service.store, reactor,
                                ready=store_service.when_ready)
    top.processor = processor
    top.spool = spool
    watcher = SpoolWatcher(spool, processor.process_file, clock=reactor,
                           concurrency=config.spool.concurrency,
                           rescan_interval=config.spool.rescan_interval)
    watcher.setName("spool")
    watcher.setServiceParent(top)
    for svc in make_ingress_services(config, spool, reactor):
        svc.setServiceParent(top)


class _PoolCloser(service.Service):
    name = "outbound-pool"

    def __init__(self, pool):
        self.pool = pool

    def stopService(self):
        super().stopService()
        return self.pool.close()


def _outbound(top, config: Config, store_service: StoreService, reactor) -> None:
    if not config.outbound.enabled:
        return
    from trackermail.bounces.policy import permanent_failure
    from trackermail.outbound.pool import pool_from_config
    from trackermail.outbound.sender import OutboxSender

    pool = pool_from_config(config.outbound, reactor)
    _PoolCloser(pool).setServiceParent(top)
    out = config.outbound
    sender = OutboxSender(
        store_service.store, pool, reactor, node=config.node, lease=out.lease,
        batch_size=out.batch_size, retry_initial=out.retry_initial,
        retry_max=out.retry_max, give_up_days=out.give_up_days,
        on_permanent_failure=permanent_failure(top.processor.context),
        ready=store_service.when_ready, peer=out.smarthost,
    )
    sender.setServiceParent(top)


def _http(top, config: Config, store_service: StoreService, reactor) -> None:
    if not config.http.listen:
        return
    from trackermail.web import make_http_services

    for svc in make_http_services(config, store_service.store, top.spool, reactor,
                                  ready=store_service.when_ready):
        svc.setServiceParent(top)


class MaintenanceService(service.Service):
    """
    Hourly housekeeping of the store: expired confirmations and old
    per-day counters go, bounce stats are kept to the days the policy reads.
    """

    name = "maintenance"
    interval = 3600.0

    def __init__(self, store_service: StoreService, config: Config, clock):
        self.store_service = store_service
        self.config = config
        self.clock = clock
        self._call = None

    def startService(self):
        super().startService()
        self._call = self.clock.callLater(60, self._tick)

    def stopService(self):
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _tick(self):
        self._call = None
        d = Deferred.fromCoroutine(self.run_once())
        d.addErrback(lambda f: log.failure("store maintenance failed", f))
        d.addBoth(lambda _: self._reschedule())

    def _reschedule(self):
        if self.running:
            self._call = self.clock.callLater(self.interval, self._tick)

    async def run_once(self):
        from datetime import datetime, timezone

        store = await self.store_service.when_ready()
        now = self.clock.seconds()
        today = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d")
        expiry = self.config.control.confirmation_expiry_days * 86400
        confirmations = await store.run(purge_confirmations, now, expiry, today)
        stats = await store.run(maintain_bounces, now, self.config)
        log.info("maintenance: removed {confirmations} expired confirmations and "
                 "{stats} old bounce records", confirmations=confirmations, stats=stats)


def _maintenance(top, config: Config, store_service: StoreService, reactor) -> None:
    MaintenanceService(store_service, config, reactor).setServiceParent(top)


# Builders for the rest of the tracker, each adding its named children.
_PARTS: list = [_mail_engine, _maintenance, _outbound, _http]


def makeService(options: Options) -> TrackerService:
    return twistd_service(options.config, getattr(options, "parent", None))


def twistd_service(config: Config, twistd_options=None) -> TrackerService:
    """
    L{buildService} for twistd (the plugin and C{tracker.tac}): listening
    errors end the process with one line instead of a traceback.
    """
    top = buildService(config)
    top.exit_on_listen_error = True
    if twistd_options is not None:
        from trackermail.logs import twistd_observer

        try:
            top.pidfile = twistd_options["pidfile"] or None
        except KeyError:
            top.pidfile = None
        top.log_observer = twistd_observer(twistd_options)
    return top
