"""The cloud-init seed: what is refused (and how it is said), what the seed holds, and that the
ISO is one cloud-init finds (label cidata, the files under their NoCloud names)."""

from __future__ import annotations

import io

import pycdlib
import pytest
from pydantic import ValidationError

from virtpool.model.cloudinit import CloudInit, check_ssh_public_key
from virtpool.model.spec import VMSpec
from virtpool.node import cloudinit
from virtpool.node.images.manifest import Manifest
from virtpool.node.launch import default_mac, wants_seed

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG4GtqUX5KQXpI1CVrbLkllnT24TUW22yGIi0PFFHeED me@host"


def refusal(**fields: object) -> str:
    with pytest.raises(ValidationError) as err:
        CloudInit(**fields)
    return str(err.value)


def test_bad_parts_are_refused_saying_what_is_wrong() -> None:
    assert "not valid YAML at line 3" in refusal(user_data="#cloud-config\nruncmd: [x\n")
    assert "does not start with the line '#cloud-config'" in refusal(user_data="runcmd: []\n")
    assert "must be a YAML mapping" in refusal(user_data="#cloud-config\n- a list\n")
    assert "this is a private key" in refusal(ssh_keys=["-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n"])
    assert "not an OpenSSH public key" in refusal(ssh_keys=["hello world"])
    assert "not an OpenSSH public key" in refusal(ssh_keys=["#cloud-config\nruncmd: []\n"])
    assert "one key per --ssh-key" in refusal(ssh_keys=[f"{KEY}\n{KEY}\n"])
    assert "is not a ssh-rsa key" in refusal(ssh_keys=[KEY.replace("ssh-ed25519", "ssh-rsa")])
    assert "base64 part is damaged" in refusal(ssh_keys=["ssh-ed25519 AAA*"])
    assert "RFC 4716" in refusal(ssh_keys=["---- BEGIN SSH2 PUBLIC KEY ----"])
    assert "'version: 1' or 'version: 2'" in refusal(network_config="ethernets: {}\n")
    assert "is not a hostname" in refusal(hostname="bad_name")
    assert "at most 65536 characters" in refusal(user_data="#cloud-config\n" + "#" * 70000)


def test_good_parts_pass_unchanged() -> None:
    config = CloudInit(user_data="#!/bin/sh\necho hi\n", ssh_keys=[f"  {KEY}\n"], hostname="web-1.lan",
                       network_config="network:\n  version: 2\n  ethernets: {}\n")
    assert config.ssh_keys == [KEY]
    assert check_ssh_public_key(KEY) == KEY
    assert config.for_clone().hostname is None and config.for_clone().ssh_keys == [KEY]


def test_seed_files_carry_the_vms_identity_and_dhcp_by_mac() -> None:
    files = cloudinit.seed_files(CloudInit(ssh_keys=[KEY]), instance_id="abc123", default_hostname="vm1",
                                 macs=["52:54:00:AA:BB:CC"])
    assert files["meta-data"] == f"instance-id: abc123\nlocal-hostname: vm1\npublic-keys:\n- {KEY}\n"
    assert files["user-data"].startswith("#cloud-config")
    assert "macaddress: 52:54:00:aa:bb:cc" in files["network-config"]
    assert "systemd-machine-id-setup" in files["vendor-data"]
    own = cloudinit.seed_files(CloudInit(hostname="h", network_config="version: 1\nconfig: []\n"),
                               instance_id="x", default_hostname="vm1", macs=[])
    assert "local-hostname: h" in own["meta-data"] and own["network-config"].startswith("version: 1")
    assert "network-config" not in cloudinit.seed_files(CloudInit(), instance_id="x",
                                                        default_hostname="vm1", macs=[])


def test_the_iso_is_labelled_cidata_with_the_nocloud_names() -> None:
    files = cloudinit.seed_files(CloudInit(), instance_id="abc", default_hostname="vm1", macs=["52:54:00:00:00:01"])
    data = cloudinit.seed_iso(files)
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        names = {child.rock_ridge.name().decode() for child in iso.list_children(iso_path="/")
                 if child.rock_ridge is not None and child.is_file()}
        assert names == {"meta-data", "user-data", "network-config", "vendor-data"}
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path="/meta-data")
        assert out.getvalue().decode() == files["meta-data"]
    finally:
        iso.close()


def test_who_gets_a_seed_and_the_default_networks_mac() -> None:
    nocloud = Manifest(name="debian-12", kernel=None, source={"cloud_init": "nocloud"})
    plain = Manifest(name="default", kernel=None)
    assert wants_seed(VMSpec(name="a"), nocloud)
    assert not wants_seed(VMSpec(name="a"), plain)
    assert wants_seed(VMSpec(name="a", cloud_init=CloudInit(hostname="h")), plain)
    assert default_mac("vm-one") == default_mac("vm-one") != default_mac("vm-two")
    assert default_mac("vm-one").startswith("52:54:00:") and len(default_mac("vm-one")) == 17
