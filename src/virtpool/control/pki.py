"""The pool's own certificate authority, with the ``cryptography`` library.

Made on the control plane's first start in ``<data>/pki/`` (key files 0600, the directory
0700). It signs the certificate of every agent that enrols (its CSR, the host's name as the
subject's CN and a DNS/IP SAN for where it answers), the control plane's own client and
server certificates, and nothing else. Revocation is a list of serials kept in the database
(``revoked_certs``) and checked on every request, both ways; no CRL files are handed around.

This module is pure cryptography and files: it never opens a socket.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from virtpool.model.certs import cert_pem, fingerprint, key_pem, new_key
from virtpool.model.errors import InvalidRequest

CA_DAYS = 3650
LEAF_DAYS = 825
CA_NAME = "virtpool pool CA"


@dataclass(frozen=True)
class Files:
    """Where a certificate and its key live."""

    cert: Path
    key: Path


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sans(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


class CertificateAuthority:
    """The pool CA in a directory; ``load_or_create`` is what a control plane calls at start."""

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.directory = directory
        self.cert = cert
        self._key = key

    @property
    def cert_file(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    @classmethod
    def load_or_create(cls, directory: Path) -> CertificateAuthority:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        cert_file, key_file = directory / "ca.crt", directory / "ca.key"
        if cert_file.exists() and key_file.exists():
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise InvalidRequest(f"{key_file} is not an EC key", hint="restore the pool CA's key")
            return cls(directory, x509.load_pem_x509_certificate(cert_file.read_bytes()), key)
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(_now() - dt.timedelta(minutes=5))
                .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        _write_private(key_file, key_pem(key))
        cert_file.write_bytes(cert_pem(cert))
        return cls(directory, cert, key)

    def sign(self, public_key: ec.EllipticCurvePublicKey | object, common_name: str,
             sans: list[str], *, client: bool, server: bool) -> x509.Certificate:
        """A leaf certificate for ``common_name``."""
        usages = ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else []) + \
                 ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(self.cert.subject)
                   .public_key(public_key)  # type: ignore[arg-type]
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(_now() - dt.timedelta(minutes=5))
                   .not_valid_after(_now() + dt.timedelta(days=LEAF_DAYS))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(_sans(sans)), critical=False)
        return builder.sign(self._key, hashes.SHA256())

    def sign_csr(self, csr_pem: bytes, common_name: str, sans: list[str]) -> x509.Certificate:
        """An agent's certificate from its CSR: client and server use, CN = host name."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as err:
            raise InvalidRequest("the certificate request is not a PEM CSR") from err
        if not csr.is_signature_valid:
            raise InvalidRequest("the certificate request's signature is not valid")
        return self.sign(csr.public_key(), common_name, sans, client=True, server=True)

    def issue(self, name: str, common_name: str, sans: list[str], *, client: bool,
              server: bool) -> Files:
        """Make (or reuse) a key and certificate in this directory as ``name``.crt/.key."""
        files = Files(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        if files.cert.exists() and files.key.exists():
            existing = x509.load_pem_x509_certificate(files.cert.read_bytes())
            if _covers(existing, sans) and existing.not_valid_after_utc > _now() + dt.timedelta(days=30):
                return files
        key = new_key()
        cert = self.sign(key.public_key(), common_name, sans, client=client, server=server)
        _write_private(files.key, key_pem(key))
        files.cert.write_bytes(cert_pem(cert))
        return files


def _covers(cert: x509.Certificate, sans: list[str]) -> bool:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return not sans
    present = {str(v) for v in ext.get_values_for_type(x509.DNSName)} | \
              {str(v) for v in ext.get_values_for_type(x509.IPAddress)}
    return set(sans) <= present


def write_private(path: Path, data: bytes) -> None:
    """Write a key (or any secret) readable by its owner only."""
    _write_private(path, data)
