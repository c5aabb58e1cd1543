# -*- test-case-name: tests.test_service -*-
"""
The tracker as a Twisted service: C{twistd -n tracker --config FILE} and
C{twistd -ny tracker.tac} both end up in L{buildService}.

Child services have stable names so that tests and tools can find them:
C{store}, C{spool}, C{smtp:N}, C{lmtp:N}, C{outbound}, C{http:N}.
"""

from __future__ import annotations

import sys

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from trackermail.config import Config, load_config
from trackermail.errors import ConfigError

log = Logger()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the trackermail mail engine: ESMTP and LMTP ingress, the durable "
        "spool and its processor, and the outbox sender. Options override the "
        "values of the configuration file."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: none, built-in defaults)"],
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
        try:
            self.config = load_config(
                self["config"], self.overrides(),
                warn=lambda msg: sys.stderr.write(f"trackermail: warning: {msg}\n"),
            )
        except ConfigError as e:
            raise usage.UsageError(str(e))


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


def buildService(config: Config, reactor=None) -> service.MultiService:
    """
    The whole tracker for C{config}.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    from trackermail.store import open_store

    top = service.MultiService()
    top.config = config
    store = open_store(config.database.url, reactor=reactor,
                       pool_size=config.database.pool_size)
    store_service = StoreService(store)
    store_service.setServiceParent(top)
    for part in _PARTS:
        part(top, config, store_service, reactor)
    return top


# Builders for the rest of the tracker, each adding its named children.
_PARTS: list = []


def makeService(options: Options) -> service.MultiService:
    return buildService(options.config)
