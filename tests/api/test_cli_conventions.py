"""The CLI's conventions, through the real `virtpool` command against a real server: what a bare
`--version` imports, the fast `vm list`, tables at 80 columns, `-c`, JSON documents, JSON Lines,
JSON errors and the exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import VIRTPOOL, Server, make_server

# What a fast command must not load (virtpool.model's pure modules, errors and layout, are fine).
# The standard library's dataclasses (with inspect) and uuid (with platform) cost 10-30 ms each
# on a 2-core host, a tenth of the 0.2 s budget: NamedTuple and os.urandom do the same jobs here.
HEAVY = ("typer", "click", "pydantic", "rich", "httpx", "fastapi", "sqlalchemy", "virtpool.sdk.client",
         "virtpool.model.vm", "virtpool.model.spec", "virtpool.control", "virtpool.node",
         "dataclasses", "inspect", "uuid")


def imported(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the `virtpool` script under ``-X importtime``; the names of the modules it imported."""
    run = subprocess.run([sys.executable, "-X", "importtime", VIRTPOOL, *args], env=env,
                         capture_output=True, text=True, timeout=60)
    modules = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    return run, modules


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Server]:
    srv = make_server(tmp_path_factory, image_cache, "cli")
    api = srv.api()
    api.create_vm("a-rather-long-name-for-a-vm")
    api.create_vm("web")
    yield srv
    srv.cleanup()


def test_version_imports_almost_nothing(cli_server: Server) -> None:
    run, modules = imported(["--version"], cli_server.env)
    assert run.returncode == 0 and re.fullmatch(r"virtpool \d+\.\d+\.\d+\n", run.stdout)
    ours = {m for m in modules if m.startswith("virtpool")}
    assert ours == {"virtpool", "virtpool.cli", "virtpool.cli.main"}, ours
    assert not [m for m in modules if m.startswith(HEAVY)]


def test_vm_list_is_a_fast_read_that_shows_where_vms_are(cli_server: Server) -> None:
    run, modules = imported(["vm", "list"], {**cli_server.env, "COLUMNS": "200"})
    assert run.returncode == 0, run.stderr
    heavy = [m for m in modules if m.startswith(HEAVY)]
    assert heavy == [], f"vm list imported {heavy}"
    header, *rows = [line for line in run.stdout.splitlines() if "import time" not in line]
    assert header.split() == ["NAME", "STATE", "ADDRESS", "HOST", "PROJECT", "UPTIME", "CPUS", "MEMORY",
                              "DISK", "IMAGE", "PORTS"]
    hostname = cli_server.api().host().hostname
    assert any(r.split()[:2] == ["web", "stopped"] and hostname in r.split() and "default" in r.split()
               for r in rows), rows


def test_vm_create_start_wait_is_a_fast_path_and_typer_s_create_is_the_same(cli_server: Server) -> None:
    # What bench/boot.py times: the CLI's start-up is part of every boot a user waits for.
    run, modules = imported(["vm", "create", "quick", "--memory", "128M", "--port", "2224:22", "--start",
                             "--wait"], cli_server.env)
    try:
        assert run.returncode == 0, run.stderr
        heavy = [m for m in modules if m.startswith(HEAVY)]
        assert heavy == [], f"vm create imported {heavy}"
        assert run.stdout == "VM 'quick' is running\n"
        vm = cli_server.api().vm("quick")
        assert vm.state.value == "running" and vm.memory_mib == 128 and [str(p) for p in vm.ports] == ["2224:22"]
        # A flag the fast path does not read goes to Typer's create: the same request, the same report.
        typed, modules = imported(["vm", "create", "slow", "--memory", "128M", "--cpu-weight", "200", "--json"],
                                  cli_server.env)
        assert typed.returncode == 0, typed.stderr
        assert "typer" in modules
        made = json.loads(typed.stdout)
        assert (made["name"], made["state"], made["memory_mib"]) == ("slow", "stopped", 128)
        assert cli_server.api().vm("slow").cpu_weight == 200
        # Refusals read the same both ways: the flag as typed, exit 1, nothing made.
        for extra in ([], ["--cpu-weight", "200"]):
            refused = cli_server.cli("vm", "create", "tiny", "--memory", "0", *extra)
            assert refused.returncode == 1 and "--memory must be at least 64 MiB" in refused.stderr, refused.stderr
            bad_port = cli_server.cli("vm", "create", "tiny", "--port", "22", *extra)
            assert bad_port.returncode == 1 and "cannot read port forward '22'" in bad_port.stderr
        assert cli_server.cli("vm", "show", "tiny").returncode == 1
        unreadable = cli_server.cli("vm", "create", "tiny", "--cpus", "two")
        assert unreadable.returncode == 2 and "--cpus" in unreadable.stderr  # Typer's usage error
    finally:
        for name in ("quick", "slow"):
            cli_server.cli("vm", "delete", name, "--force")


def test_tables_fit_80_columns_and_never_cut_ids(cli_server: Server) -> None:
    api = cli_server.api()
    op = api.start_vm("web")
    api.wait_operation(op, timeout=180)
    env = {**cli_server.env, "COLUMNS": "80"}
    for command in (["vm", "list"], ["operation", "list"], ["audit", "list"], ["host", "list"]):
        shown = subprocess.run([VIRTPOOL, *command], env=env, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        too_wide = [line for line in shown.stdout.splitlines() if len(line) > 80]
        assert too_wide == [], f"{command}: {too_wide}"
    ops = subprocess.run([VIRTPOOL, "operation", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert op.id in ops.stdout  # whole, so that it can be copied
    vms = subprocess.run([VIRTPOOL, "vm", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert "a-rather-long-name-for-a-vm" in vms.stdout
    running = next(line for line in vms.stdout.splitlines() if line.startswith("web "))
    assert re.search(r"\b\d+m\d\ds\b", running), running  # its uptime
    hosts = subprocess.run([VIRTPOOL, "host", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert "…" not in hosts.stdout  # the figures are whole


def test_columns_are_chosen_by_name_or_letter(cli_server: Server) -> None:
    by_letter = cli_server.cli("vm", "list", "-c", "nsI")
    by_name = cli_server.cli("vm", "list", "--columns", "name,state,id")
    assert by_letter.returncode == 0 and by_letter.stdout == by_name.stdout
    assert by_letter.stdout.splitlines()[0].split() == ["NAME", "STATE", "ID"]
    assert cli_server.api().vm("web").id in by_letter.stdout
    bad = cli_server.cli("vm", "list", "-c", "name,colour")
    assert bad.returncode == 2 and "unknown column 'colour'" in bad.stderr and "n=name" in bad.stderr


def test_json_documents_and_json_errors(cli_server: Server) -> None:
    listed = cli_server.cli("vm", "list", "--json")
    assert listed.returncode == 0
    assert {v["name"] for v in json.loads(listed.stdout)} >= {"web", "a-rather-long-name-for-a-vm"}
    missing = cli_server.cli("vm", "show", "nope", "--json")
    assert missing.returncode == 1 and missing.stdout == ""
    problem = json.loads(missing.stderr)
    assert problem["exit_code"] == 1 and problem["status"] == 404 and "nope" in problem["detail"]
    usage = cli_server.cli("vm", "show", "--json", "--frobnicate")
    assert usage.returncode == 2
    assert json.loads(usage.stderr)["error"] == "UsageError"
    assert cli_server.cli("vm", "show").returncode == 2  # a missing argument is a usage error too


def test_events_are_json_lines(cli_server: Server) -> None:
    shown = cli_server.cli("events", "--json")
    assert shown.returncode == 0
    lines = shown.stdout.splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)
    assert all("project" in json.loads(line) for line in lines)


def test_following_events_exits_3_when_the_server_goes(tmp_path_factory: pytest.TempPathFactory) -> None:
    srv = make_server(tmp_path_factory, None, "lost", command="server")
    try:
        follower = subprocess.Popen([VIRTPOOL, "events", "--follow", "--json"], env=srv.env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert follower.poll() is None  # it follows
        srv.stop()
        _, err = follower.communicate(timeout=60)
        assert follower.returncode == 3, err
        assert json.loads(err.splitlines()[-1])["exit_code"] == 3
    finally:
        srv.stop()


def test_shell_completion_offers_the_vms_names(cli_server: Server) -> None:
    env = {**cli_server.env, "_VIRTPOOL_COMPLETE": "complete_bash", "COMP_WORDS": "virtpool vm show w",
           "COMP_CWORD": "3"}
    offered = subprocess.run([VIRTPOOL], env=env, capture_output=True, text=True, timeout=60)
    assert offered.returncode == 0, offered.stderr
    assert "web" in offered.stdout.split() and "a-rather-long-name-for-a-vm" not in offered.stdout
    env["COMP_WORDS"] = "virtpool vm show "
    every = subprocess.run([VIRTPOOL], env=env, capture_output=True, text=True, timeout=60)
    assert {"web", "a-rather-long-name-for-a-vm"} <= set(every.stdout.split())


def test_help_has_examples_and_flags_have_no_placeholder(cli_server: Server) -> None:
    for command in (["vm", "list"], ["vm", "exec"], ["vm", "stop"], ["host", "list"], []):
        shown = cli_server.cli(*command, "--help", env_extra={"COLUMNS": "100"})
        assert shown.returncode == 0, shown.stderr
        assert "Examples:" in shown.stdout, command
        assert "<bool>" not in shown.stdout, command
    assert "--force" in cli_server.cli("vm", "stop", "--help").stdout
