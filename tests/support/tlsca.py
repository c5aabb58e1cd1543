"""
A throw-away certificate authority for TLS tests, made with C{cryptography}.

    ca = TestCA()
    ca_file = ca.write_ca(self.mktemp())          # for [outbound] ca_file
    server = ca.issue(["localhost"], ["127.0.0.1"])
    ESMTP(contextFactory=server.options())        # a TLS-capable test server

Keys are EC P-256 so a test pays milliseconds, not RSA key generation.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import ssl


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class IssuedCertificate:
    cert_pem: bytes
    key_pem: bytes

    def options(self) -> ssl.CertificateOptions:
        """
        Server-side TLS options (for C{ESMTP(contextFactory=...)} or
        C{transport.startTLS}).
        """
        return ssl.PrivateCertificate.loadPEM(self.key_pem + self.cert_pem).options()

    def write(self, path: str) -> str:
        with open(path, "wb") as f:
            f.write(self.key_pem + self.cert_pem)
        return path


class TestCA:
    """
    A self-signed CA that issues server certificates.
    """

    def __init__(self, common_name: str = "trackermail test CA"):
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self._name = _name(common_name)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False,
                    key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_pem = self._cert.public_bytes(serialization.Encoding.PEM)

    def write_ca(self, path: str) -> str:
        with open(path, "wb") as f:
            f.write(self.ca_pem)
        return path

    def trust_root(self):
        return ssl.Certificate.loadPEM(self.ca_pem)

    def issue(self, dns_names: Sequence[str] = ("localhost",),
              ip_addresses: Sequence[str] = ()) -> IssuedCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        common = dns_names[0] if dns_names else (ip_addresses[0] if ip_addresses else "server")
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCertificate(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))
