"""`vm create --host NAME` through the real CLI against a real server (SQLite and PostgreSQL):
the VM goes to that host and stays pinned there; a host that cannot take it is refused with the
scheduler's reason for that host; an unknown host is a clear error. A refusal leaves nothing.

The hosts are inventory rows without an agent, so the VMs are records (nothing boots); that a
pinned VM runs on its host is shown in tests/cluster/test_agents.py.
"""

from __future__ import annotations

import json

from tests.conftest import Server


def test_vm_create_host_pins_refuses_what_does_not_fit_and_names_an_unknown_host(
        api_server: Server) -> None:
    api = api_server.api()
    api.add_host("pin-big", cpus=8, memory_mib=8192, disk_mib=100_000)
    api.add_host("pin-small", cpus=2, memory_mib=1024, disk_mib=100_000)
    try:
        made = api_server.cli("vm", "create", "pin1", "--host", "pin-small", "--memory", "256M")
        assert made.returncode == 0, made.stderr
        assert "created on host 'pin-small'" in made.stdout
        shown = json.loads(api_server.cli("vm", "show", "pin1", "--json").stdout)
        assert shown["host"] == "pin-small" and shown["pinned"] is True

        # The spread weigher would pick pin-big for this one; the pin says otherwise, and the
        # refusal names what pin-small lacks.
        refused = api_server.cli("vm", "create", "pin2", "--host", "pin-small", "--memory", "2G")
        assert refused.returncode != 0, refused.stderr
        assert "host 'pin-small' cannot take 'pin2': it lacks memory (needs 2048 MiB" in refused.stderr
        assert "drop --host" in refused.stderr

        unknown = api_server.cli("vm", "create", "pin3", "--host", "pin-nowhere")
        assert unknown.returncode != 0
        assert "no host named 'pin-nowhere'" in unknown.stderr and "host list" in unknown.stderr

        assert sorted(v.name for v in api.vms() if v.name.startswith("pin")) == ["pin1"]
        assert api.inventory_host("pin-small").memory_mib.allocated == 256  # the refusal took nothing
    finally:
        for vm in api.vms():
            if vm.name.startswith("pin"):
                api.delete_vm(vm.name, force=True)
        api.remove_host("pin-big")
        api.remove_host("pin-small")
