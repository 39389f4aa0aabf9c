"""The pool CA in the database (control/ca_store.py): sealed with the pool's passphrase, made
once however many servers start at the same time, and refused with another passphrase."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from virtpool.control import ca_store
from virtpool.control.pki import CertificateAuthority
from virtpool.control.store import db
from virtpool.control.store.tables import PoolCARow
from virtpool.model.errors import Unauthorized


def _sessions(tmp_path: Path):  # type: ignore[no-untyped-def]
    return db.session_factory(db.open_database(db.sqlite_url(tmp_path / "state.db")))


def test_the_key_in_the_database_is_sealed(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path)
    ca = ca_store.load_or_create(sessions, tmp_path / "a" / "pki")
    with sessions() as session:
        row = session.get(PoolCARow, 1)
        assert row is not None
    key = (tmp_path / "a" / "pki" / "ca.key").read_bytes()
    assert b"PRIVATE KEY" not in row.sealed_key.encode() and key not in row.sealed_key.encode()
    passphrase = ca_store.read_passphrase(tmp_path / "a" / "pki" / ca_store.PASSPHRASE_FILE)
    assert ca_store.unseal(row.sealed_key, ca.cert, passphrase) == key
    with pytest.raises(Unauthorized, match="not the pool's"):
        ca_store.unseal(row.sealed_key, ca.cert, b"another-passphrase-entirely")
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    with pytest.raises(Unauthorized):  # the sealed key belongs to its certificate only
        ca_store.unseal(row.sealed_key, other.cert, passphrase)


def test_servers_starting_at_once_share_one_ca(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path)
    shared = tmp_path / "passphrase"
    shared.write_text("one-passphrase-for-the-whole-pool\n")
    made: dict[int, str] = {}

    def start(n: int) -> None:
        made[n] = ca_store.load_or_create(sessions, tmp_path / f"s{n}" / "pki", shared).fingerprint

    threads = [threading.Thread(target=start, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 4 and len(set(made.values())) == 1
    with sessions() as session:
        assert session.query(PoolCARow).count() == 1


def test_a_server_without_the_passphrase_is_told_where_to_get_it(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path)
    ca_store.load_or_create(sessions, tmp_path / "first" / "pki")
    with pytest.raises(ca_store.CAPassphraseMissing, match="not given"):
        ca_store.load_or_create(sessions, tmp_path / "second" / "pki")
    assert not (tmp_path / "second" / "pki" / "ca.key").exists()
