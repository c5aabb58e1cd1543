"""
The outbound settings (C{[tracker] node}, C{[outbound] lease}) and how the
tracker wires its sender from them.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.pipeline import make_config
from trackermail.errors import ConfigError


class NodeTests(SynchronousTestCase):
    def test_default_node_is_host_and_spool(self):
        """By default a node is named by its host and its spool's absolute path."""
        config = make_config(spool={"path": "var/spool"})
        self.assertEqual(config.node, f"{socket.gethostname()}:{os.path.abspath('var/spool')}")

    def test_node_setting(self):
        """[tracker] node names the node."""
        self.assertEqual(make_config(tracker={"node": "mx1"}).node, "mx1")

    def test_lease_setting(self):
        """[outbound] lease defaults to 30 s, takes a number, and must be at least 1 s."""
        self.assertEqual(make_config().outbound.lease, 30.0)
        self.assertEqual(make_config(outbound={"lease": 3}).outbound.lease, 3.0)
        with self.assertRaises(ConfigError) as e:
            make_config(outbound={"lease": 0.5})
        self.assertIn("[outbound] lease", str(e.exception))


class ServiceWiringTests(SynchronousTestCase):
    def test_sender_uses_the_settings(self):
        """The tracker's sender claims as its node, with its lease, and names its smarthost."""
        from trackermail.service import buildService

        base = os.path.abspath(self.mktemp())
        config = make_config(tracker={"node": "mx1:/srv/spool"},
                             database={"url": f"sqlite:///{base}/t.sqlite"},
                             spool={"path": f"{base}/spool"},
                             outbound={"lease": 12, "smarthost": "relay.example:587"},
                             smtp={"listen": []}, lmtp={"listen": []})
        top = buildService(config, MemoryReactorClock())
        sender = top.getServiceNamed("outbound")
        self.assertEqual((sender.node, sender.lease, sender.watch.peer),
                         ("mx1:/srv/spool", 12.0, "relay.example:587"))
        self.assertEqual(sender.recorder.node, "mx1:/srv/spool")
