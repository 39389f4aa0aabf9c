"""The range of VM uids one agent draws from, claimed so that no other agent on the host uses it.

Every agent on a machine (two `virtpool up` on two data dirs, the cluster tests' three agents)
numbers its VMs from 0, so VM number ``n`` must map to a uid that is unique on the *host*, not
just in one pool: otherwise one platform's QEMU could open another's disks. Each agent claims
one range of ``RANGE_SIZE`` uids for its data dir:

- The claims live in one host-wide directory, ``CLAIMS_DIR`` (root's, 0700): a file
  ``<index>.claim`` per range, holding the absolute path of the data dir that owns it. The agent
  holds an exclusive ``flock`` on its claim file for its whole life, so two live agents can never
  share a range, whatever they hold in their data dirs.
- The data dir records its range (``uid-range``), so a restarted agent re-claims the same range
  and the VMs it adopts keep their uids and their files.
- A range stays taken while its owner is stopped, as long as that data dir still records the
  range: the stopped platform's disks still belong to those uids. A claim whose data dir is gone
  (or records another range) is free again. The directory is under /var/lib, not /run, so that a
  reboot does not hand a stopped platform's range to the first agent that starts.
- Choosing a new range happens under a host-wide lock (``.lock`` in the claims dir), so two
  agents starting at once pick different ranges.

Range 0 is 2_000_000..2_999_999, the numbering every agent used before ranges existed.

What this module must never do: hand out a range another live agent holds, or follow a symlink
in the claims dir.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from virtpool.model.errors import OperationFailed
from virtpool.node.sandbox.users import VM_ID_BASE, VM_ID_COUNT, VMUser

# Beside, not inside, the default data dir of root (/var/lib/virtpool): the claims are the
# host's, not one platform's.
CLAIMS_DIR = Path("/var/lib/virtpool-uid-ranges")
RANGE_SIZE = VM_ID_COUNT  # VM numbers 0..999_999 in every range
# Ids stay below 2**31: some tools still read uids as signed 32-bit numbers.
RANGE_COUNT = (2**31 - VM_ID_BASE) // RANGE_SIZE
RECORD_NAME = "uid-range"  # in the data dir: {"index": N, "first_uid": ..., "size": ...}


@dataclass(frozen=True)
class UidRange:
    """One agent's block of VM uids: VM number ``n`` runs as ``first_uid + n``."""

    index: int

    @property
    def first_uid(self) -> int:
        return VM_ID_BASE + self.index * RANGE_SIZE

    def user(self, number: int) -> VMUser:
        """The user of VM number ``number`` in this range (same number, same ids)."""
        if not 0 <= number < RANGE_SIZE:
            raise ValueError(f"VM number {number} is outside 0..{RANGE_SIZE - 1}")
        return VMUser(uid=self.first_uid + number, gid=self.first_uid + number)


class UidRangeClaim:
    """A range held for this process's life: the claim file stays flocked until ``release``."""

    def __init__(self, uid_range: UidRange, fd: int) -> None:
        self.range = uid_range
        self._fd: int | None = fd

    def release(self) -> None:
        """Let go of the lock (the claim itself stays, recorded in the data dir)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def claim(data_dir: Path, claims_dir: Path = CLAIMS_DIR) -> UidRangeClaim:
    """Claim the data dir's range (the one it records, else the first free one) and hold it.

    Raises OperationFailed when the recorded range is held by another live agent (two agents on
    one data dir, or a copied data dir), or when every range on the host is taken.
    """
    data_dir = data_dir.resolve()
    claims_dir.mkdir(mode=0o700, exist_ok=True)
    with _host_lock(claims_dir):
        recorded = _recorded(data_dir)
        if recorded is not None:
            fd = _try_claim(claims_dir, recorded, data_dir)
            if fd is None:
                raise OperationFailed(
                    f"the uid range {recorded} recorded in {data_dir / RECORD_NAME} is held by "
                    "another agent on this host",
                    hint="run one agent per data dir; a copied data dir needs its "
                    f"{RECORD_NAME} file removed (its VMs then get new uids)",
                )
            return UidRangeClaim(UidRange(recorded), fd)
        for index in range(RANGE_COUNT):
            fd = _try_claim(claims_dir, index, data_dir)
            if fd is not None:
                _record(data_dir, UidRange(index))
                return UidRangeClaim(UidRange(index), fd)
    raise OperationFailed(
        f"every one of the {RANGE_COUNT} VM uid ranges on this host is claimed",
        hint=f"remove the claims of data dirs no longer used from {claims_dir}",
    )


def _try_claim(claims_dir: Path, index: int, data_dir: Path) -> int | None:
    """The locked descriptor of range ``index``'s claim file, now naming ``data_dir``; None if
    another live agent holds it, or another data dir (a stopped platform's) still records it."""
    path = claims_dir / f"{index}.claim"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    owner = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    if owner and owner != str(data_dir) and _recorded(Path(owner)) == index:
        os.close(fd)  # a stopped platform's range: its disks still belong to these uids
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{data_dir}\n".encode(), 0)
    return fd


def _recorded(data_dir: Path) -> int | None:
    try:
        record = json.loads((data_dir / RECORD_NAME).read_text())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    except ValueError as err:
        raise OperationFailed(
            f"{data_dir / RECORD_NAME} is not the uid range record virtpool wrote",
            hint="restore it, or remove it to have the agent claim a new range",
        ) from err
    index = record.get("index") if isinstance(record, dict) else None
    if not isinstance(index, int) or not 0 <= index < RANGE_COUNT:
        raise OperationFailed(
            f"{data_dir / RECORD_NAME} names no valid uid range",
            hint="restore it, or remove it to have the agent claim a new range",
        )
    return index


def _record(data_dir: Path, uid_range: UidRange) -> None:
    path = data_dir / RECORD_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"index": uid_range.index, "first_uid": uid_range.first_uid,
                               "size": RANGE_SIZE}) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@contextmanager
def _host_lock(claims_dir: Path) -> Iterator[None]:
    """The claims dir's own lock, held while a range is chosen."""
    fd = os.open(claims_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
