"""
Tests of the ingress wiring helpers.
"""

from __future__ import annotations

import os

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from trackermail.config import config_from_dict
from trackermail.errors import ConfigError
from trackermail.ingress.lmtp import LMTPIngress
from trackermail.ingress.service import (
    build_lmtp_factory,
    build_smtp_factory,
    make_ingress_services,
    make_spool,
)
from trackermail.ingress.smtp import SMTPIngress
from trackermail.ingress.spool import Spool


def config(**sections):
    raw = {"tracker": {"fqdn": "tracker.example.org", "dev": True}}
    raw.update(sections)
    return config_from_dict(raw, require_fqdn=True, warn=lambda msg: None)


class IngressServiceTests(SynchronousTestCase):
    def test_one_service_per_endpoint(self):
        """Each SMTP and LMTP endpoint gets its own named listening service."""
        c = config(smtp={"listen": ["tcp:2525", "unix:/tmp/x.sock"]},
                   lmtp={"listen": ["tcp:2424:interface=127.0.0.1"]})
        services = make_ingress_services(c, Spool(self.mktemp()), task.Clock())
        self.assertEqual([s.name for s in services],
                         ["smtp:tcp:2525", "smtp:unix:/tmp/x.sock",
                          "lmtp:tcp:2424:interface=127.0.0.1"])

    def test_no_endpoints(self):
        """Empty listen lists give no services."""
        c = config(smtp={"listen": []}, lmtp={"listen": []})
        self.assertEqual(make_ingress_services(c, Spool(self.mktemp()), task.Clock()), [])

    def test_factories_follow_config(self):
        """The factories carry the FQDN, size limit and unqualified setting of the config."""
        c = config(tracker={"fqdn": "T.example.org", "dev": True, "accept_unqualified": True},
                   limits={"max_message_size": 1234})
        spool = Spool(self.mktemp())
        smtp = build_smtp_factory(c, spool, task.Clock())
        lmtp = build_lmtp_factory(c, spool, task.Clock())
        self.assertIsInstance(smtp.buildProtocol(None), SMTPIngress)
        self.assertIsInstance(lmtp.buildProtocol(None), LMTPIngress)
        s = lmtp.settings
        self.assertEqual((s.fqdn, s.max_message_size, s.accept_unqualified, s.tls_context),
                         ("t.example.org", 1234, True, None))

    def test_unreadable_certificate(self):
        """A missing certificate file is a configuration error naming the key."""
        c = config(smtp={"tls_certificate": "/nonexistent.pem", "tls_key": "/nonexistent.key"})
        e = self.assertRaises(ConfigError, build_smtp_factory, c, Spool(self.mktemp()),
                              task.Clock())
        self.assertIn("[smtp] tls_certificate", str(e))

    def test_spool(self):
        """The spool follows [spool]."""
        path = self.mktemp()
        c = config(spool={"path": path, "fsync": False})
        spool = make_spool(c, task.Clock())
        self.assertEqual((spool.path, spool.fsync), (os.path.abspath(path), False))

    def test_limits(self):
        """The servers' limits follow [limits]."""
        c = config(limits={"max_connections": 7, "max_connections_per_ip": 3,
                           "max_recipients": 9, "idle_timeout": 11, "transaction_time": 12,
                           "min_data_rate": 13})
        s = build_lmtp_factory(c, Spool(self.mktemp()), task.Clock()).settings
        self.assertEqual((s.max_connections, s.max_connections_per_ip, s.max_recipients,
                          s.timeout, s.transaction_time, s.min_data_rate), (7, 3, 9, 11, 12, 13))
