"""The ACLs that let only a linked clone's own QEMU user read its base (checked by the kernel)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import passable
from virtpool.node.sandbox import acl

CLONE_UID, OTHER_UID = 4_190_001, 4_190_002  # no such users: the kernel checks numbers


def can_read(uid: int, path: Path) -> bool:
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "cat", str(path)],
                          capture_output=True).returncode == 0


def test_encoding_round_trips() -> None:
    assert acl.decode_readers(acl.encode(6, {7, 3})) == {3, 7}
    assert acl.decode_readers(acl.encode(6, set())) == set()
    assert acl.decode_readers(b"junk") == set()


def test_only_the_named_users_read_the_file(tmp_path: Path) -> None:
    passable(tmp_path)  # the other users pass through to the file
    base = tmp_path / "base.qcow2"
    base.write_text("tenant data")
    base.chmod(0o600)
    assert not can_read(CLONE_UID, base)

    acl.set_readers(base, {CLONE_UID})
    assert acl.readers(base) == {CLONE_UID}
    assert can_read(CLONE_UID, base) and not can_read(OTHER_UID, base)

    acl.set_readers(base, set())  # its last clone went
    assert acl.readers(base) == set() and not can_read(CLONE_UID, base)
    assert base.stat().st_mode & 0o777 == 0o600
