# -*- test-case-name: tests.ingress.test_service -*-
"""
Wiring helpers: the listening services and the spool watcher for a Config.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import IService
from twisted.internet.defer import Deferred

from trackermail.endpoints import ListeningService
from trackermail.ingress.lmtp import build_lmtp_factory
from trackermail.ingress.smtp import build_smtp_factory
from trackermail.ingress.spool import Spool, SpoolWatcher


def make_spool(config: Any, reactor: Any) -> Spool:
    """
    The spool of C{[spool] path} (created if missing).
    """
    return Spool(config.spool.path, fsync=config.spool.fsync, reactor=reactor)


def make_ingress_services(config: Any, spool: Spool, reactor: Any) -> list[IService]:
    """
    One listening service per endpoint of C{[smtp] listen} and
    C{[lmtp] listen}, named C{smtp:ENDPOINT} / C{lmtp:ENDPOINT}.
    """
    services: list[IService] = []
    if config.smtp.listen:
        smtp_factory = build_smtp_factory(config, spool, reactor)
        for description in config.smtp.listen:
            services.append(ListeningService("smtp", description, smtp_factory, reactor))
    if config.lmtp.listen:
        lmtp_factory = build_lmtp_factory(config, spool, reactor)
        for description in config.lmtp.listen:
            services.append(ListeningService("lmtp", description, lmtp_factory, reactor))
    return services


def make_spool_watcher(config: Any, spool: Spool, process: Callable[[str], Deferred],
                       reactor: Any) -> SpoolWatcher:
    """
    The watcher feeding C{spool} to C{process} with the configured
    concurrency and rescan interval.
    """
    return SpoolWatcher(
        spool,
        process,
        clock=reactor,
        concurrency=config.spool.concurrency,
        rescan_interval=config.spool.rescan_interval,
    )
