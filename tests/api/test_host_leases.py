"""`host list` and `host show NAME` against real servers: the local host's lease is renewed by
its in-process agent, and its age, epoch, agent version and address are what a user reads."""

from __future__ import annotations

import json

from tests.conftest import Server, wait_for
from virtpool import __version__


def json_objects(text: str) -> list[dict]:
    """The JSON objects `virtpool events --json` prints one after another."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        value, at = decoder.raw_decode(text, at)
        found.append(value)
    return found


def test_host_list_shows_state_lease_age_agent_version_and_address(api_server: Server) -> None:
    local = api_server.api().host().hostname
    api_server.api().add_host("rack9", cpus=4, memory_mib=4096, disk_mib=100_000)
    shown = api_server.cli("host", "list")
    assert shown.returncode == 0, shown.stderr
    header = next(line for line in shown.stdout.splitlines() if "HOST" in line)
    for column in ("STATE", "LEASE", "AGENT", "ADDRESS"):
        assert column in header
    line = next(line for line in shown.stdout.splitlines() if local in line)
    assert "s ago" in line and __version__ in line and "local" in line
    rack = next(line for line in shown.stdout.splitlines() if "rack9" in line)
    assert "s ago" not in rack  # a host row no agent ever took a lease for
    rows = {r["name"]: r for r in json.loads(api_server.cli("host", "list", "--json").stdout)}
    assert rows[local]["state"] == "up" and rows[local]["agent_version"] == __version__
    assert rows[local]["lease_epoch"] >= 1 and 0 <= rows[local]["lease_age_s"] < 60
    assert rows["rack9"]["lease_epoch"] is None and rows["rack9"]["lease_age_s"] is None
    api_server.api().remove_host("rack9")


def test_the_local_lease_keeps_being_renewed(api_server: Server) -> None:
    local = api_server.api().host().hostname

    def age() -> float:
        return api_server.api().inventory_host(local).lease_age_s or 0.0

    # The heartbeat comes every 5 s: the age grows, then drops back when it is renewed.
    ages: list[float] = []

    def renewed() -> bool:
        ages.append(age())
        return len(ages) > 1 and ages[-1] < ages[-2]

    assert wait_for(renewed, timeout=30, interval=0.5), f"never renewed; ages seen: {ages}"
    assert api_server.api().inventory_host(local).state == "up"


def test_host_show_names_one_host_and_refuses_an_unknown_one(api_server: Server) -> None:
    local = api_server.api().host().hostname
    shown = api_server.cli("host", "show", local)
    assert shown.returncode == 0, shown.stderr
    assert "this server's own host" in shown.stdout and "epoch" in shown.stdout
    assert __version__ in shown.stdout
    as_json = json.loads(api_server.cli("host", "show", local, "--json").stdout)
    assert as_json["name"] == local and as_json["lease_epoch"] >= 1
    missing = api_server.cli("host", "show", "no-such-host")
    assert missing.returncode == 1 and "no host named 'no-such-host'" in missing.stderr
    assert "host list" in missing.stderr
    hardware = api_server.cli("host", "show")  # without a name: this host's hardware, as before
    assert hardware.returncode == 0 and "accelerator" in hardware.stdout


def test_a_host_state_change_is_in_the_event_stream_and_the_audit_log(api_server: Server) -> None:
    api = api_server.api()
    api.add_host("rack8", cpus=4, memory_mib=4096, disk_mib=100_000)
    changed = api_server.cli("host", "state", "rack8", "maintenance")
    assert changed.returncode == 0, changed.stderr
    listed = api_server.cli("events", "--kind", "host.", "--json").stdout
    events = json_objects(listed)
    mine = [e for e in events if (e.get("data") or {}).get("host") == "rack8"]
    assert [(e["kind"], e["data"]["state"]) for e in mine] == [("host.state", "maintenance")]
    audit = json.loads(api_server.cli("audit", "list", "--json").stdout)
    assert any("rack8" in (a.get("target") or "") and "state" in a["action"] for a in audit)
    api.remove_host("rack8")
