"""The pool CA, shared by every server of a pool through its database.

Several `virtpool server`s on one PostgreSQL are one pool: an agent enrolled through one must be
accepted by all, so they sign with one CA. The CA lives in the ``pool_ca`` row (id 1): its
certificate in clear, its key *sealed*: AES-256-GCM under a key derived with scrypt
(n=2^14, r=8, p=1) from the pool's CA passphrase, the certificate's SHA-256 as associated data
(a sealed key cannot be paired with another certificate). A reader of the database alone (a
dump, a backup, a role with SELECT) gets no usable key; a server needs the passphrase too, as
a k3s server needs the cluster token.

The passphrase: ``--ca-passphrase-file`` when given, else ``<data>/pki/ca.passphrase``; the
first server of a pool makes it there (random, 0600). Every further server is given a copy.
The first start makes the row with a plain INSERT of id 1: of two servers starting at once,
the primary key lets one win and the other reads the winner's CA.

Each server keeps the CA in its data dir too (``pki/ca.crt``, ``pki/ca.key``, 0600), where its
leaf certificates (API, agent listener, control-plane client) are issued from it.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.pki import CertificateAuthority, write_private
from virtpool.control.store.tables import PoolCARow
from virtpool.model.certs import cert_pem, fingerprint, key_pem
from virtpool.model.errors import InvalidRequest, Unauthorized

PASSPHRASE_FILE = "ca.passphrase"
MIN_PASSPHRASE = 16
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1


class CAPassphraseMissing(Unauthorized):
    """The pool's CA is in the database but this server has not been given its passphrase."""

    title = "pool CA passphrase missing"


def _kdf(passphrase: bytes, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)


def seal(key_pem_bytes: bytes, cert: x509.Certificate, passphrase: bytes) -> str:
    """The CA's key encrypted for the database (see the module's docstring)."""
    salt, nonce = os.urandom(16), os.urandom(12)
    sealed = AESGCM(_kdf(passphrase, salt)).encrypt(nonce, key_pem_bytes, fingerprint(cert).encode())
    return json.dumps({"v": 1, "kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
                       "salt": base64.b64encode(salt).decode(), "nonce": base64.b64encode(nonce).decode(),
                       "aead": "aes-256-gcm", "data": base64.b64encode(sealed).decode()})


def unseal(sealed: str, cert: x509.Certificate, passphrase: bytes) -> bytes:
    """The CA's key from the database; Unauthorized when the passphrase is not the pool's."""
    box = json.loads(sealed)
    salt, nonce, data = (base64.b64decode(box[k]) for k in ("salt", "nonce", "data"))
    key = Scrypt(salt=salt, length=32, n=int(box["n"]), r=int(box["r"]), p=int(box["p"])).derive(passphrase)
    try:
        return AESGCM(key).decrypt(nonce, data, fingerprint(cert).encode())
    except InvalidTag:
        raise Unauthorized("the CA passphrase this server was given is not the pool's: it cannot "
                           "open the pool CA's key in the database",
                           hint="give it the pool's passphrase (pki/ca.passphrase of a server "
                                "of the pool) with --ca-passphrase-file") from None


def read_passphrase(path: Path) -> bytes:
    try:
        value = path.read_bytes().strip()
    except OSError as err:
        raise InvalidRequest(f"cannot read the CA passphrase {path}: {err.strerror}",
                             hint="copy pki/ca.passphrase from a server of the pool") from err
    if len(value) < MIN_PASSPHRASE:
        raise InvalidRequest(f"the CA passphrase in {path} is shorter than {MIN_PASSPHRASE} characters",
                             hint="use the pool's passphrase file as it was made")
    return value


def load_or_create(sessions: sessionmaker[Session], directory: Path,
                   passphrase_file: Path | None = None) -> CertificateAuthority:
    """The pool's CA from the database (made there on the pool's first start, from this data
    dir's CA when it has one), written to ``directory`` for this server's use."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    own = directory / PASSPHRASE_FILE
    given = passphrase_file if passphrase_file is not None else own if own.exists() else None
    with sessions() as session:
        row = session.get(PoolCARow, 1)
        found = (row.cert_pem, row.sealed_key) if row is not None else None
    if found is None:
        found, given = _create(sessions, directory, given)
    if given is None:
        raise CAPassphraseMissing(
            "this pool's CA is in its database, sealed with the pool's CA passphrase, which this "
            "server was not given",
            hint="copy pki/ca.passphrase from the data dir of a server of the pool to this "
                 "machine (keep it 0600) and start with --ca-passphrase-file PATH")
    cert = x509.load_pem_x509_certificate(found[0].encode())
    key = serialization.load_pem_private_key(unseal(found[1], cert, read_passphrase(given)), password=None)
    if passphrase_file is not None and passphrase_file.resolve() != own.resolve():
        write_private(own, read_passphrase(passphrase_file) + b"\n")  # later starts need no flag
    _write_ca(directory, cert, key)
    return CertificateAuthority.load_or_create(directory)


def _create(sessions: sessionmaker[Session], directory: Path,
            given: Path | None) -> tuple[tuple[str, str], Path]:
    """Put a CA in the database (this data dir's, or a new one), sealed with ``given`` (made
    when None); the row of whoever won, and the passphrase file."""
    if given is None:
        given = directory / PASSPHRASE_FILE
        write_private(given, secrets.token_urlsafe(32).encode() + b"\n")
    ca = CertificateAuthority.load_or_create(directory)  # the data dir's own, or a new one
    key_bytes = (directory / "ca.key").read_bytes()
    row = PoolCARow(id=1, cert_pem=cert_pem(ca.cert).decode(),
                    sealed_key=seal(key_bytes, ca.cert, read_passphrase(given)))
    try:
        with sessions.begin() as session:
            session.add(row)
    except IntegrityError:
        pass  # another server made it first: theirs is the pool's
    with sessions() as session:
        won = session.get(PoolCARow, 1)
        if won is None:  # not reached: the row was just written by us or by another
            raise InvalidRequest("the pool CA row vanished", hint="start again")
        return (won.cert_pem, won.sealed_key), given


def _write_ca(directory: Path, cert: x509.Certificate, key: object) -> None:
    """The pool's CA into this data dir; leaf certificates of another CA made here go."""
    current = directory / "ca.crt"
    if current.exists() and current.read_bytes() == cert_pem(cert):
        return
    for stale in directory.glob("*.crt"):
        if stale.name != "ca.crt":
            stale.unlink()
    write_private(directory / "ca.key", key_pem(key))  # type: ignore[arg-type]
    current.write_bytes(cert_pem(cert))
