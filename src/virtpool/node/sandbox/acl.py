"""POSIX access ACLs on one file: read access for chosen VM users, nobody else.

A linked clone's QEMU must read the base its disk sits on, and no other VM's QEMU may: a VM's
user can rewrite its own qcow2 header to name any file, so a group that every VM user holds
(as images have) would hand one tenant's base to all. Each base therefore carries one ACL
entry per clone user. The kernel's xattr format (``system.posix_acl_access``, little endian:
a version word, then tag/permission/id entries sorted by tag then id) is small enough to
write directly, so no ``setfacl`` is needed.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

from virtpool.model.errors import OperationFailed

XATTR = "system.posix_acl_access"
VERSION = 2
USER_OBJ, USER, GROUP_OBJ, MASK, OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
READ = 4


def encode(owner_perm: int, readers: set[int]) -> bytes:
    """The xattr value: the owner with ``owner_perm``, ``readers`` with read, nobody else. Pure."""
    entries = [(USER_OBJ, owner_perm, UNDEFINED_ID)]
    entries += [(USER, READ, uid) for uid in sorted(readers)]
    entries += [(GROUP_OBJ, 0, UNDEFINED_ID)]
    if readers:
        entries.append((MASK, READ, UNDEFINED_ID))
    entries.append((OTHER, 0, UNDEFINED_ID))
    return struct.pack("<I", VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)


def decode_readers(value: bytes) -> set[int]:
    """The uids a value grants read to. Pure."""
    if len(value) < 4 or struct.unpack_from("<I", value)[0] != VERSION:
        return set()
    return {uid for tag, perm, uid in struct.iter_unpack("<HHI", value[4:])
            if tag == USER and perm & READ}


def readers(path: Path) -> set[int]:
    try:
        return decode_readers(os.getxattr(path, XATTR, follow_symlinks=False))
    except OSError as err:
        if err.errno == errno.ENODATA:
            return set()
        raise


def set_readers(path: Path, uids: set[int]) -> None:
    """Let exactly ``uids`` (besides the owner) read ``path``."""
    try:
        if uids:
            os.setxattr(path, XATTR, encode(6, uids), follow_symlinks=False)
        else:
            try:
                os.removexattr(path, XATTR, follow_symlinks=False)
            except OSError as err:
                if err.errno != errno.ENODATA:
                    raise
            os.chmod(path, 0o600, follow_symlinks=False)
    except OSError as err:
        if err.errno == errno.EOPNOTSUPP:
            raise OperationFailed(f"the file system of {path.parent} has no POSIX ACLs, which linked "
                                  "clones need", hint="mount it with ACLs (ext4, xfs, tmpfs have them), or "
                                  "clone with --full") from err
        raise
