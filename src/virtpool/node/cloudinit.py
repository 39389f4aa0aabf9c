"""A VM's cloud-init NoCloud seed: an ISO 9660 image labelled ``cidata`` (made with pycdlib).

It holds ``meta-data`` (the VM's id as instance-id, its hostname, the SSH keys), ``user-data``
(the user's, or an empty cloud-config), ``network-config`` (the user's, else DHCP on each of the
VM's NICs, matched by MAC) and ``vendor-data``: a script that gives a clone (a copied disk that
cloud-init sees as a new instance) its own machine-id.

:func:`seed_files` is pure; :func:`seed_iso` packs them, and the agent writes the result into the
VM's run dir at each start (so a changed spec or a clone always boots with its own seed).
"""

from __future__ import annotations

import io

import pycdlib
import yaml

from virtpool.model.cloudinit import CloudInit

SEED_LABEL = "cidata"  # what NoCloud looks for (blkid -t LABEL=cidata)
EMPTY_USER_DATA = "#cloud-config\n{}\n"

# cloud-init runs vendor scripts once per instance. On the first instance of a disk the
# machine-id systemd made at first boot stays; on a later one (a clone: the copied disk already
# knows another instance) it is made anew, so two clones never share a machine-id (nor, through
# it, a DHCP client id or a journal).
MACHINE_ID_SCRIPT = """#!/bin/sh
# virtpool: a clone of a VM is a new instance of a copied disk; give it its own machine-id.
instances=$(ls /var/lib/cloud/instances | wc -l)
if [ "$instances" -gt 1 ]; then
    rm -f /etc/machine-id /var/lib/dbus/machine-id
    systemd-machine-id-setup
fi
"""

# ISO 9660 names (8.3-ish, upper case) and the names Rock Ridge and Joliet give the guest.
_FILES = (
    ("META_DATA.;1", "meta-data"),
    ("USER_DATA.;1", "user-data"),
    ("NETWORK_CONFIG.;1", "network-config"),
    ("VENDOR_DATA.;1", "vendor-data"),
)


def meta_data(instance_id: str, hostname: str, ssh_keys: list[str]) -> str:
    document: dict[str, object] = {"instance-id": instance_id, "local-hostname": hostname}
    if ssh_keys:
        document["public-keys"] = list(ssh_keys)
    return yaml.safe_dump(document, sort_keys=False, width=1 << 20)  # keys stay on one line


def default_network_config(macs: list[str]) -> str | None:
    """DHCP (v4) on each NIC, found by its MAC; None when no MAC is known (cloud-init then
    takes DHCP on the first NIC by itself)."""
    if not macs:
        return None
    ethernets = {f"nic{index}": {"match": {"macaddress": mac.lower()}, "dhcp4": True}
                 for index, mac in enumerate(macs)}
    return yaml.safe_dump({"version": 2, "ethernets": ethernets}, sort_keys=False)


def seed_files(config: CloudInit, *, instance_id: str, default_hostname: str,
               macs: list[str]) -> dict[str, str]:
    """The seed's files by name: what the guest's cloud-init reads."""
    files = {
        "meta-data": meta_data(instance_id, config.hostname or default_hostname, config.ssh_keys),
        "user-data": config.user_data or EMPTY_USER_DATA,
        "vendor-data": MACHINE_ID_SCRIPT,
    }
    network = config.network_config or default_network_config(macs)
    if network is not None:
        files["network-config"] = network
    return files


def seed_iso(files: dict[str, str]) -> bytes:
    """An ISO 9660 image labelled ``cidata`` with ``files`` (Rock Ridge and Joliet names)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=SEED_LABEL)
    try:
        for iso_name, name in _FILES:
            if name not in files:
                continue
            data = files[name].encode()
            iso.add_fp(io.BytesIO(data), len(data), f"/{iso_name}", rr_name=name,
                       joliet_path=f"/{name}")
        out = io.BytesIO()
        iso.write_fp(out)
        return out.getvalue()
    finally:
        iso.close()
