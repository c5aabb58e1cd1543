# -*- test-case-name: tests.ingress.test_service -*-
"""
Wiring helpers: the spool and the listening services for a Config.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService

from trackermail.endpoints import ListeningService
from trackermail.ingress.lmtp import LMTPIngress
from trackermail.ingress.server import IngressFactory, settings_from_config
from trackermail.ingress.smtp import SMTPIngress
from trackermail.ingress.spool import Spool


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


def build_smtp_factory(config: Any, spool: Any, reactor: Any) -> IngressFactory:
    """
    The ESMTP server factory for C{config} (STARTTLS when a certificate and
    key are configured).
    """
    factory = IngressFactory(settings_from_config(config, spool, reactor, tls=True))
    factory.protocol = SMTPIngress
    return factory


def build_lmtp_factory(config: Any, spool: Any, reactor: Any) -> IngressFactory:
    """The LMTP server factory for C{config} (no STARTTLS: LMTP is local)."""
    factory = IngressFactory(settings_from_config(config, spool, reactor, tls=False))
    factory.protocol = LMTPIngress
    return factory
