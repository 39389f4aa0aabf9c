"""`vm exec`, `vm stop --force` and the messages users met, through the real CLI against a
real server with a real guest."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import VIRTPOOL, Server, wait_for
from tests.vm import exec_streams


@pytest.fixture(scope="module")
def web(server: Server) -> Iterator[str]:
    started = server.cli("vm", "create", "web", "--start", "--wait")
    assert started.returncode == 0, started.stderr
    yield "web"
    server.cli("vm", "delete", "web", "--force")


def test_options_before_the_double_dash_are_virtpool_s(server: Server, web: str) -> None:
    ran = server.cli("vm", "exec", web, "--json", "--timeout", "30", "--", "sh", "-c", "echo out; exit 3")
    assert ran.returncode == 3, ran.stderr
    result = json.loads(ran.stdout)
    assert result["exit_code"] == 3 and result["stdout"] == "out\n"


def test_piped_input_reaches_the_command(server: Server, web: str) -> None:
    ran = server.cli("vm", "exec", web, "--", "cat", input=b"hello from a pipe\n")
    assert ran.returncode == 0 and ran.stdout == "hello from a pipe\n"


def test_a_command_that_times_out_is_killed_in_the_guest_and_exits_5(server: Server, web: str) -> None:
    ran = server.cli("vm", "exec", web, "--timeout", "2", "--", "sleep", "57")
    assert ran.returncode == 5, (ran.returncode, ran.stderr)
    assert "still running after 2s" in ran.stderr
    left = server.cli("vm", "exec", web, "--", "ps")
    assert left.returncode == 0 and "sleep 57" not in left.stdout, left.stdout
    # Listed through the captured (not streamed) exec, which makes no output files of its own.
    files = server.api().exec(web, ["ls", "-a", "/tmp"]).stdout.split()
    assert [f for f in files if f.startswith(".virtpool-exec")] == []  # the killed command's are gone


def test_output_streams_back_while_the_command_runs(server: Server, web: str) -> None:
    exec_streams.check_output_streams_back(server.env, web)


def test_piped_input_streams_to_the_command_while_it_runs(server: Server, web: str) -> None:
    exec_streams.check_input_streams_in(server.env, web)
    exec_streams.check_large_input_arrives_whole(server.env, web)
    exec_streams.check_a_reader_that_stops_early_ends_the_input(server.env, web)


def test_quick_execs_run_while_a_long_one_does(server: Server, web: str) -> None:
    exec_streams.check_quick_execs_run_while_a_long_one_does(server.env, web)


def test_concurrent_streaming_execs_keep_their_own_input_and_output(server: Server, web: str) -> None:
    exec_streams.check_concurrent_streams_keep_their_own_input_and_output(server.env, web)


def test_a_command_reading_a_pipe_that_never_ends_is_killed_at_its_timeout(server: Server, web: str) -> None:
    with subprocess.Popen(["sleep", "600"], stdout=subprocess.PIPE) as silent:
        ran = subprocess.run([VIRTPOOL, "vm", "exec", web, "--timeout", "3", "--", "cat"], env=server.env,
                             stdin=silent.stdout, capture_output=True, text=True, timeout=180)
        silent.kill()
    assert ran.returncode == 5, (ran.returncode, ran.stderr)
    assert "still running after 3s" in ran.stderr
    left = server.cli("vm", "exec", web, "--", "ps")
    assert left.returncode == 0 and " cat" not in left.stdout, left.stdout
    files = server.api().exec(web, ["ls", "-a", "/tmp"]).stdout.split()
    assert [f for f in files if f.startswith(".virtpool-exec")] == []  # its pipe and output files are gone


def test_the_exec_socket_says_what_is_wrong_and_is_audited(server: Server, web: str) -> None:
    api = server.api()
    url = api.url.replace("http://", "ws://") + f"/api/v1/vms/{web}/exec"
    bearer = {"Authorization": f"Bearer {api.token}"}
    tracebacks = server.log.read_text().count("Traceback")
    seen = max((e.id for e in api.audit(limit=1000)), default=0)
    for first, said in (("not json", "the first message must be"), (json.dumps({"argv": []}), "argv"),
                        (json.dumps({"argv": ["true"], "timeout": 0}), "timeout"),
                        (json.dumps({"argv": "true"}), "argv must be a list")):
        with connect(url, additional_headers=bearer) as conn:
            conn.send(first)
            problem = json.loads(conn.recv(timeout=60))["problem"]
        assert problem["status"] == 422 and said in problem["detail"], problem
    for where, headers, status in ((url, {"Authorization": "Bearer nope"}, 401),
                                   (url.replace(f"/vms/{web}/", "/vms/nope/"), bearer, 404)):
        with pytest.raises(InvalidStatus) as refused:
            connect(where, additional_headers=headers)
        assert refused.value.response.status_code == status
        assert json.loads(refused.value.response.body or b"{}")["status"] == status
    entries = [e for e in api.audit(after=seen, limit=1000) if e.action == "WS /vms/{name}/exec"]
    assert len(entries) == 4 and {e.target for e in entries} == {web}  # the refused handshakes ran nothing
    assert server.log.read_text().count("Traceback") == tracebacks


def test_the_url_up_prints_for_the_api_works_too(server: Server, web: str) -> None:
    url = server.api().url
    listed = server.cli("vm", "list", env_extra={"VIRTPOOL_URL": f"{url}/api/v1/"})
    assert listed.returncode == 0 and "web" in listed.stdout, listed.stderr
    shown = server.cli("vm", "show", web, env_extra={"VIRTPOOL_URL": f"{url}/api/v1"})
    assert shown.returncode == 0, shown.stderr


def test_refusals_name_the_flag_the_user_typed(server: Server) -> None:
    refused = server.cli("vm", "create", "tiny", "--memory", "0")
    assert refused.returncode == 1
    assert "--memory must be at least 64 MiB" in refused.stderr and "memory_mib" not in refused.stderr
    assert server.cli("vm", "show", "tiny").returncode == 1  # nothing was created


def test_a_taken_name_is_said_before_a_full_host(server: Server, web: str) -> None:
    refused = server.cli("vm", "create", web, "--memory", "8000G")
    assert refused.returncode == 1
    assert f"a VM named '{web}' exists" in refused.stderr, refused.stderr


def test_deleting_a_running_vm_says_how(server: Server, web: str) -> None:
    refused = server.cli("vm", "delete", web)
    assert refused.returncode == 1 and "--force" in refused.stderr, refused.stderr
    assert server.api().vm(web).state.value == "running"


def test_a_console_detach_is_no_error_in_the_server_log(server: Server, web: str) -> None:
    before = server.log.read_text().count("Traceback")
    api = server.api()
    ws_url = api.url.replace("http://", "ws://")
    for _ in range(3):
        with connect(f"{ws_url}/api/v1/vms/{web}/console",
                     additional_headers={"Authorization": f"Bearer {api.token}"}) as conn:
            conn.send(b"\n")
    # The server notices each detach after the client has gone: give it a moment to log.
    assert not wait_for(lambda: server.log.read_text().count("Traceback") > before, timeout=3)


def test_stop_force_pulls_the_plug_and_the_console_then_says_stopped(server: Server) -> None:
    # A VM of its own: the other tests need theirs running, whatever order they run in.
    assert server.cli("vm", "create", "plug", "--start", "--wait").returncode == 0
    try:
        # A guest that ignores a shutdown: a graceful stop would wait the whole --timeout
        # (an hour here) and the CLI give up after --wait-timeout with exit 5.
        deaf = server.cli("vm", "exec", "plug", "--", "sh", "-c",
                          "mount --bind /bin/true /sbin/shutdown && mount --bind /bin/true /sbin/poweroff")
        assert deaf.returncode == 0, deaf.stderr
        stopped = server.cli("vm", "stop", "plug", "--force", "--timeout", "3600", "--wait-timeout", "120")
        assert stopped.returncode == 0, stopped.stderr
        vm = server.api().vm("plug")
        assert vm.state.value == "stopped" and vm.stopped_by == "forced"
        refused = server.cli("vm", "console", "plug")
        assert refused.returncode == 1
        assert "VM 'plug' is stopped" in refused.stderr and "start it first" in refused.stderr
        assert "HTTP 409" not in refused.stderr
    finally:
        server.cli("vm", "delete", "plug", "--force")
