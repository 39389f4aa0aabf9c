"""Which URLs a client sends a token to in clear text (none beyond loopback), and how a pinned
certificate is trusted: by what it is, not by a name (sdk/tls.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from virtpool.control.pki import CertificateAuthority
from virtpool.sdk import InsecureURL, Trust
from virtpool.sdk.tls import context, is_loopback, refuse_clear_text


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "::1", "[::1]"])
def test_loopback_names(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("url", ["http://10.0.0.5:8470", "http://example.org", "http://[fd00::2]:1",
                                 "http://0.0.0.0:8470"])
def test_plain_http_beyond_loopback_is_refused(url: str) -> None:
    with pytest.raises(InsecureURL, match="clear text"):
        refuse_clear_text(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8470", "http://localhost:1", "https://10.0.0.5:8470"])
def test_loopback_or_https_is_sent_to(url: str) -> None:
    refuse_clear_text(url)


def test_a_pinned_certificate_is_its_own_anchor_without_a_name_check(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    leaf = ca.issue("api", "api", ["10.0.0.5"], client=False, server=True)
    pinned = context(Trust(pinned_cert=leaf.cert, remote="lab"))
    assert pinned.verify_mode == ssl.CERT_REQUIRED and not pinned.check_hostname
    assert pinned.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    by_ca = context(Trust(ca_file=ca.cert_file))
    assert by_ca.verify_mode == ssl.CERT_REQUIRED and by_ca.check_hostname
