"""What the API serves with (api/server.py: api_tls, api_names): plain HTTP only on loopback,
an operator's certificate checked before it is used, the pool CA's names for a wildcard."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtpool.api.server import ServeOptions, api_names, api_tls
from virtpool.control.pki import CertificateAuthority
from virtpool.model.errors import InvalidRequest


def test_loopback_is_plain_http(tmp_path: Path) -> None:
    assert api_tls(None, ServeOptions(data_dir=tmp_path, host="127.0.0.1")) is None  # type: ignore[arg-type]


def test_an_operator_certificate_needs_its_key_and_must_match_it(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    one = ca.issue("one", "one", ["10.0.0.5"], client=False, server=True)
    two = ca.issue("two", "two", ["10.0.0.5"], client=False, server=True)
    with pytest.raises(InvalidRequest, match="go together"):
        api_tls(None, ServeOptions(data_dir=tmp_path, host="10.0.0.5", tls_cert=one.cert))  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="cannot serve with"):
        api_tls(None, ServeOptions(data_dir=tmp_path, host="10.0.0.5", tls_cert=one.cert,  # type: ignore[arg-type]
                                   tls_key=two.key))
    given = api_tls(None, ServeOptions(data_dir=tmp_path, host="127.0.0.1", tls_cert=one.cert,  # type: ignore[arg-type]
                                       tls_key=one.key))
    assert given is not None and given.cert == one.cert  # on loopback too, when given


def test_a_wildcard_certificate_names_the_machine_s_addresses_not_the_wildcard() -> None:
    names = api_names("0.0.0.0")
    assert "127.0.0.1" in names and "localhost" in names and "0.0.0.0" not in names
    assert "10.9.8.7" in api_names("10.9.8.7")
