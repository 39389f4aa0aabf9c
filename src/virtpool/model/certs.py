"""Pure helpers for the pool's certificates and join tokens, shared by both ends of the pool's
mutual TLS (control/pki.py holds the CA; node/service/identity.py an agent's key). No I/O.

A join token is ``vpj1.<id>.<secret>.<ca-sha256>``: the id finds its row, the secret proves
it (only its SHA-256 is stored), and the CA's fingerprint lets the agent trust the control
plane on its very first contact, before it has a certificate of its own (as kubeadm's
discovery hash does).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from virtpool.model.errors import Unauthorized

TOKEN_PREFIX = "vpj1"
CONTROL_PLANE_CN = "virtpool-control-plane"


@dataclass(frozen=True)
class JoinToken:
    id: str
    secret: str
    ca_fingerprint: str

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}.{self.id}.{self.secret}.{self.ca_fingerprint}"


def parse_join_token(text: str) -> JoinToken:
    """Read a join token; raises Unauthorized (401) when it is not one."""
    parts = text.strip().split(".")
    if len(parts) != 4 or parts[0] != TOKEN_PREFIX or not all(parts[1:]) or len(parts[3]) != 64:
        raise Unauthorized("this is not a virtpool join token",
                           hint="get one with `virtpool host join-token` on the control plane")
    return JoinToken(parts[1], parts[2], parts[3].lower())


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, hex: what a join token and a pinned remote carry."""
    return cert.fingerprint(hashes.SHA256()).hex()


def fingerprint_of_pem(pem: bytes) -> str:
    return fingerprint(x509.load_pem_x509_certificate(pem))


def serial_of(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def make_csr(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)
