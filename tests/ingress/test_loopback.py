"""
The servers over real sockets, driven by real clients.
"""

from __future__ import annotations

import datetime
import os
import shutil
import smtplib
import ssl as stdlib_ssl
import subprocess
import tempfile

from twisted.internet import reactor, threads
from twisted.internet.endpoints import serverFromString
from twisted.trial.unittest import TestCase

from tests.ingress import FQDN
from trackermail.ingress.lmtp import LMTPIngress
from trackermail.ingress.server import IngressFactory, IngressSettings
from trackermail.ingress.smtp import SMTPIngress
from trackermail.ingress.spool import Spool

MESSAGE = (
    "From: someone@example.com\r\n"
    "Subject: hello\r\n"
    "\r\n"
    "body \u00e9\r\n"
    ".line with a dot\r\n"
).encode("utf-8")


def make_self_signed(directory: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    return cert_path, key_path


class LoopbackTests(TestCase):
    def setUp(self):
        self.spool = Spool(self.mktemp(), reactor=reactor)
        self.addCleanup(self.spool.close)

    async def listen(self, protocol_class, description="tcp:0:interface=127.0.0.1",
                     tls_context=None):
        settings = IngressSettings(fqdn=FQDN, accept_unqualified=False,
                                   max_message_size=1_000_000, spool=self.spool,
                                   reactor=reactor, tls_context=tls_context)
        factory = IngressFactory(settings)
        factory.protocol = protocol_class
        port = await serverFromString(reactor, description).listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost()

    def stored(self):
        """The stored messages (without their envelope lines)."""
        return [self.spool.open_message(n).body().read() for n in self.spool.list_new()]

    def envelopes(self):
        return [self.spool.open_message(n).envelope for n in self.spool.list_new()]

    async def test_smtplib_smtp(self):
        """Python's smtplib delivers over ESMTP: one durable file for both recipients."""
        host = await self.listen(SMTPIngress)

        def send():
            with smtplib.SMTP("127.0.0.1", host.port, timeout=30) as c:
                c.ehlo("client.example")
                assert c.has_extn("pipelining") and c.has_extn("size")
                return c.sendmail("someone@example.com",
                                  [f"control@{FQDN}", f"dispatch+foo_bts@{FQDN}"], MESSAGE)

        refused = await threads.deferToThread(send)
        self.assertEqual(refused, {})
        (copy,) = self.stored()
        (envelope,) = self.envelopes()
        self.assertEqual(envelope.recipients, (f"control@{FQDN}", f"dispatch+foo_bts@{FQDN}"))
        self.assertEqual(envelope.sender, "someone@example.com")
        self.assertTrue(copy.endswith("body \u00e9\n.line with a dot\n".encode()))

    async def test_smtplib_refuses_relay(self):
        """smtplib sees 550 for a recipient in another domain."""
        host = await self.listen(SMTPIngress)

        def send():
            with smtplib.SMTP("127.0.0.1", host.port, timeout=30) as c:
                try:
                    c.sendmail("a@example.com", ["b@example.com"], MESSAGE)
                except smtplib.SMTPRecipientsRefused as e:
                    return e.recipients

        refused = await threads.deferToThread(send)
        self.assertEqual(refused["b@example.com"][0], 550)
        self.assertEqual(self.stored(), [])

    async def test_smtplib_lmtp(self):
        """Python's smtplib.LMTP delivers one message with one recipient."""
        host = await self.listen(LMTPIngress)

        def send():
            with smtplib.LMTP("127.0.0.1", host.port, timeout=30) as c:
                return c.sendmail("", [f"bounces+x@{FQDN}"], MESSAGE)

        self.assertEqual(await threads.deferToThread(send), {})
        (envelope,) = self.envelopes()
        self.assertEqual((envelope.sender, envelope.recipients), ("", (f"bounces+x@{FQDN}",)))

    async def test_lmtp_unix_socket(self):
        """LMTP over a UNIX socket (as Postfix's lmtp transport uses it) works."""
        path = os.path.join(tempfile.mkdtemp(dir="/tmp"), "lmtp.sock")
        self.addCleanup(shutil.rmtree, os.path.dirname(path))
        await self.listen(LMTPIngress, f"unix:{path}")

        def send():
            with smtplib.LMTP(path, timeout=30) as c:
                return c.sendmail("a@example.com", [f"control@{FQDN}"], MESSAGE)

        self.assertEqual(await threads.deferToThread(send), {})
        self.assertIn(b"(local socket)", self.stored()[0])

    async def test_smtp_starttls(self):
        """smtplib upgrades to TLS and then delivers; the Received: line says ESMTPS."""
        from trackermail.ingress.server import tls_context_from_files

        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = make_self_signed(directory)
        host = await self.listen(SMTPIngress, tls_context=tls_context_from_files(cert, key))

        def send():
            ctx = stdlib_ssl.create_default_context(cafile=cert)
            with smtplib.SMTP("localhost", host.port, timeout=30) as c:
                c.ehlo()
                assert c.has_extn("starttls")
                c.starttls(context=ctx)
                c.ehlo()
                assert not c.has_extn("starttls")
                return c.sendmail("a@example.com", [f"control@{FQDN}"], MESSAGE)

        self.assertEqual(await threads.deferToThread(send), {})
        self.assertIn(b"with ESMTPS id", self.stored()[0])

    async def test_postfix_smtp_source(self):
        """Postfix's smtp-source delivers 20 messages over 4 LMTP sessions."""
        smtp_source = shutil.which("smtp-source")
        if smtp_source is None:
            raise self.skipTest("smtp-source not installed (apt-get install postfix)")
        host = await self.listen(LMTPIngress)

        def run():
            return subprocess.run(
                [smtp_source, "-L", "-s", "4", "-m", "20", "-l", "2000", "-M", "client.example",
                 "-f", "sender@example.com", "-t", f"dispatch+foo@{FQDN}",
                 f"127.0.0.1:{host.port}"],
                capture_output=True, timeout=120)

        result = await threads.deferToThread(run)
        self.assertEqual(result.returncode, 0, result.stderr)
        copies = self.stored()
        self.assertEqual(len(copies), 20)
        self.assertTrue(all(e.recipients == (f"dispatch+foo@{FQDN}",) for e in self.envelopes()))


CHILD = r"""
import sys
sys.path.insert(0, sys.argv[2])
from twisted.internet import reactor
from trackermail.config import config_from_dict
from trackermail.ingress.service import build_lmtp_factory
from trackermail.ingress.spool import Spool
config = config_from_dict({"tracker": {"fqdn": "tracker.example.org", "dev": True}},
                          warn=lambda m: None)
spool = Spool(sys.argv[1], fsync=True, reactor=reactor)
port = reactor.listenTCP(0, build_lmtp_factory(config, spool, reactor), interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""


class CrashTests(TestCase):
    def test_sigkill_loses_no_acknowledged_message(self):
        """A server killed with SIGKILL mid-stream keeps every message it answered 250 for."""
        import signal
        import socket
        import sys

        spool_dir = os.path.abspath(self.mktemp())
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

        def scenario():
            child = subprocess.Popen([sys.executable, "-c", CHILD, spool_dir, root],
                                     stdout=subprocess.PIPE)
            try:
                port = int(child.stdout.readline())
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                f = sock.makefile("rb")

                def reply():
                    while True:
                        line = f.readline()
                        if not line:
                            return None
                        if line[3:4] != b"-":
                            return line

                reply()
                sock.sendall(b"LHLO test\r\n")
                reply()
                acked = []
                for i in range(200):
                    mid = f"<crash-{i}@example.com>"
                    sock.sendall(f"MAIL FROM:<a@example.com>\r\nRCPT TO:<control@{FQDN}>\r\n"
                                 "DATA\r\n".encode())
                    for _ in range(3):
                        reply()
                    sock.sendall(f"Message-ID: {mid}\r\n\r\n".encode() + b"x" * 3000
                                 + b"\r\nEND\r\n.\r\n")
                    if i == 40:
                        # Killed while this message is being stored.
                        os.kill(child.pid, signal.SIGKILL)
                        break
                    line = reply()
                    if line and line.startswith(b"250"):
                        acked.append(mid)
                sock.close()
                return acked
            finally:
                if child.poll() is None:
                    child.kill()
                child.wait()
                child.stdout.close()

        def check(acked):
            self.assertEqual(len(acked), 40)
            new_dir = os.path.join(spool_dir, "new")
            stored = {}
            for name in os.listdir(new_dir):
                with open(os.path.join(new_dir, name), "rb") as fh:
                    data = fh.read()
                self.assertTrue(data.endswith(b"\nEND\n"), name)
                mid = data.split(b"Message-ID: ", 1)[1].split(b"\n", 1)[0].decode()
                stored[mid] = stored.get(mid, 0) + 1
            for mid in acked:
                self.assertEqual(stored.get(mid), 1, mid)

        return threads.deferToThread(scenario).addCallback(check)
