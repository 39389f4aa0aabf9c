"""How the SDK and the CLI trust a virtpool server they reach over HTTPS.

Beyond loopback a virtpool server answers HTTPS only, with a certificate of its pool's own CA
(or one its operator gave it). A client trusts it through one of:

- a CA file (``VIRTPOOL_CA``, or the pool CA in the data dir of a server on this machine):
  the chain is verified and the server's name must be in its certificate;
- a certificate pinned on first use (`virtpool remote add`): exactly that certificate is
  accepted (OpenSSL's partial-chain mode, so the pinned leaf is its own anchor), whatever
  name the client used to reach it; any other certificate is refused, even one of the same CA;
- neither: the system's trusted CAs (a certificate from a public CA).

Standard library only, and cheap: the CLI's fast path (cli/fast.py) builds its context here,
and a context with one small CA file costs a fraction of a millisecond where the system bundle
costs ~50 ms. ``ssl``, ``hashlib``, ``socket`` and ``ipaddress`` are imported by the functions
that use them: a command against ``http://127.0.0.1`` needs none of them, and on a 2-core host
each costs 5-35 ms of a command's 0.2 s budget.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import ssl

CA_ENV = "VIRTPOOL_CA"


class Trust(NamedTuple):
    """What a client accepts as the server's certificate (see the module's docstring)."""

    ca_file: Path | None = None
    pinned_cert: Path | None = None
    remote: str | None = None  # the remote's name, for messages about a pinned certificate

    @classmethod
    def from_env(cls) -> Trust:
        """``VIRTPOOL_CA`` when set, else the system's CAs."""
        env = os.environ.get(CA_ENV)
        return cls(ca_file=Path(env)) if env else cls()

    def describe(self) -> str:
        if self.pinned_cert is not None:
            return f"the certificate pinned for remote '{self.remote}' ({self.pinned_cert})"
        if self.ca_file is not None:
            return f"the CA in {self.ca_file}"
        return "the system's trusted CAs"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback (where plain HTTP stays on the machine)."""
    if host.lower() == "localhost" or host in ("127.0.0.1", "::1", "[::1]"):
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refuse_clear_text(url: str) -> None:
    """Raise InsecureURL for an ``http://`` URL whose host is not loopback: a token sent there
    would cross a network in clear text."""
    parts = urlsplit(url)
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        from virtpool.sdk.errors import InsecureURL

        raise InsecureURL(0, "insecure URL", f"refusing to send a token in clear text to {url}: "
                          "beyond loopback virtpool serves HTTPS only",
                          f"use {url.replace('http://', 'https://', 1)}")


def context(trust: Trust) -> ssl.SSLContext:
    """An SSL context that accepts what ``trust`` says, and nothing else."""
    import ssl

    if trust.pinned_cert is not None:
        ctx = ssl.create_default_context(cafile=str(trust.pinned_cert))
        # The pinned certificate is the identity: it is accepted by what it is, not by a name.
        ctx.check_hostname = False
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        return ctx
    if trust.ca_file is not None:
        try:
            return ssl.create_default_context(cafile=str(trust.ca_file))
        except (OSError, ssl.SSLError) as err:
            raise UntrustedCA(f"cannot read the CA file {trust.ca_file}: {err}") from err
    return ssl.create_default_context()


class UntrustedCA(Exception):
    """The CA file named for the server cannot be read."""


def presented_certificate(host: str, port: int, timeout: float = 10.0) -> bytes:
    """The DER certificate a server presents, read without trusting it (for `remote add`, and to
    say which certificate a refused server showed). Sends nothing but the TLS handshake."""
    import socket
    import ssl

    unchecked = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unchecked.check_hostname = False
    unchecked.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with unchecked.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("the server presented no certificate")
    return der


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate, hex (what `remote add` shows and `remote list` lists)."""
    import hashlib

    return hashlib.sha256(der).hexdigest()


def pem(der: bytes) -> str:
    import ssl

    return ssl.DER_cert_to_PEM_cert(der)


def pinned_fingerprint(trust: Trust) -> str | None:
    if trust.pinned_cert is None:
        return None
    import ssl

    try:
        return fingerprint(ssl.PEM_cert_to_DER_cert(trust.pinned_cert.read_text()))
    except (OSError, ValueError):
        return None


def explain_refusal(url: str, trust: Trust, err: ssl.SSLError) -> tuple[str, str]:
    """What to tell a user whose client refused ``url``'s certificate: (message, hint)."""
    import ssl

    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    try:
        shown = fingerprint(presented_certificate(host, port))
    except (OSError, ssl.SSLError):
        shown = None
    reason = getattr(err, "verify_message", None) or getattr(err, "reason", None) or str(err)
    pinned = pinned_fingerprint(trust)
    if pinned is not None:
        if shown is not None and shown != pinned:
            return (f"the server at {url} presents a different certificate from the one pinned for "
                    f"remote '{trust.remote}': it shows SHA-256 {shown}, the pin is {pinned}. "
                    "Nothing was sent to it",
                    "if its certificate was replaced on purpose (ask its operator to compare the "
                    f"fingerprint), `virtpool remote remove {trust.remote}` and add it again; "
                    "otherwise something is impersonating the server")
        return (f"the server at {url} refused the TLS handshake with the pinned certificate "
                f"({reason})", "check the URL and the server")
    return (f"the server at {url} is not trusted: its certificate ({'SHA-256 ' + shown if shown else 'unreadable'}) "
            f"does not verify against {trust.describe()} ({reason}). Nothing was sent to it",
            "set VIRTPOOL_CA to the pool CA's file (api-ca.crt in the server's data dir), or pin "
            f"the server with `virtpool remote add NAME {parts.scheme}://{parts.netloc}`")
