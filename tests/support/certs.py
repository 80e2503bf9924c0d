"""Certificates the TLS tests make for themselves (the `cryptography` package):
a CA, a server certificate for 127.0.0.1/localhost, client certificates by CN,
and a second CA that Shoal does not trust."""
from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: str, key, cert) -> None:
    with open(path + ".key", "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(path + ".crt", "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


class Certs:
    """``certs.ca``, ``certs.server_crt``/``server_key``; ``certs.client("alice")`` -> (crt, key)."""

    def __init__(self, directory: str | None = None):
        self.dir = directory or tempfile.mkdtemp(prefix="shoal-certs", dir="/tmp")
        self._ca_key, self._ca_cert = self._make_ca("Shoal test CA", "ca")
        self._other_key, self._other_cert = self._make_ca("Untrusted test CA", "other-ca")
        self.ca = os.path.join(self.dir, "ca.crt")
        self.other_ca = os.path.join(self.dir, "other-ca.crt")
        self.server_crt, self.server_key = self._issue("server", "localhost", server=True)

    def _make_ca(self, name: str, file: str):
        key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        _write(os.path.join(self.dir, file), key, cert)
        return key, cert

    def _issue(self, file: str, cn: str, server: bool = False, untrusted: bool = False) -> tuple[str, str]:
        ca_key, ca_cert = (self._other_key, self._other_cert) if untrusted else (self._ca_key, self._ca_cert)
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(ca_cert.subject).public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                            critical=False)
             .add_extension(x509.ExtendedKeyUsage(
                 [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        path = os.path.join(self.dir, file)
        _write(path, key, cert)
        return path + ".crt", path + ".key"

    def client(self, cn: str, untrusted: bool = False) -> tuple[str, str]:
        """A client certificate with this CN (signed by the untrusted CA if asked)."""
        return self._issue(f"client-{cn}{'-untrusted' if untrusted else ''}", cn, untrusted=untrusted)

    @property
    def server_spki(self) -> str:
        """base64 SHA-256 of the server key's SubjectPublicKeyInfo (Chromium's
        --ignore-certificate-errors-spki-list)."""
        import base64

        with open(self.server_crt, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        h = hashes.Hash(hashes.SHA256())
        h.update(spki)
        return base64.b64encode(h.finalize()).decode()

    def settings(self, **extra) -> dict:
        """Node settings for a TLS listener with these certificates."""
        return {"tls_certfile": self.server_crt, "tls_keyfile": self.server_key, "tls_cafile": self.ca, **extra}
