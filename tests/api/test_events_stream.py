"""VM state changes stream as server-sent events; `virtpool events --follow` prints them."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Iterator

import httpx
import pytest

import virtpool
from tests.conftest import VIRTPOOL, Server
from virtpool.model.event import Event


def collect(events: Iterator[Event]) -> queue.Queue[Event]:
    """Read a stream in a thread; the test takes events from the queue as they arrive. The
    stream ends when its client is closed (an event the test waits for then never comes)."""
    found: queue.Queue[Event] = queue.Queue()

    def read() -> None:
        try:
            for event in events:
                found.put(event)
        except virtpool.Unreachable:
            pass

    threading.Thread(target=read, daemon=True).start()
    return found


def next_for(found: queue.Queue[Event], vm: str) -> Event:
    while True:
        event = found.get(timeout=30)
        if event.vm == vm:
            return event


def test_stream_delivers_new_events_with_their_project(api_server: Server) -> None:
    api = api_server.api()
    start = max([e.id for e in api.events(limit=1000)], default=0)
    found = collect(api.stream_events(after=start, kind="vm.state"))
    api.create_vm("streamed")
    event = next_for(found, "streamed")
    assert event.kind == "vm.state" and event.data and event.data["state"] == "stopped"
    assert event.project == "default"
    api.delete_vm("streamed")
    assert next_for(found, "streamed").data["state"] == "deleting"  # type: ignore[index]


def test_stream_filters_by_vm_and_project(api_server: Server) -> None:
    api = api_server.api()
    api.create_project("elsewhere")
    start = max([e.id for e in api.events(limit=1000)], default=0)
    only_b = collect(api.stream_events(after=start, vm="fb"))
    elsewhere = collect(api.stream_events(after=start, project="elsewhere"))
    api.create_vm("fa")
    api.create_vm("fb")
    with virtpool.Client(api.url, api.token, project="elsewhere") as other:
        other.create_vm("fc")
        assert only_b.get(timeout=30).vm == "fb"
        event = elsewhere.get(timeout=30)
        assert (event.vm, event.project) == ("fc", "elsewhere")
        other.delete_vm("fc")
    api.delete_vm("fa")
    api.delete_vm("fb")
    assert elsewhere.get(timeout=30).vm == "fc"  # its deletion; nothing of fa or fb came between


def test_a_project_token_streams_its_own_project_only(api_server: Server) -> None:
    api = api_server.api()
    api.create_project("narrow")
    secret = api.create_token("narrow-viewer", "viewer", project="narrow").token
    with virtpool.Client(api.url, secret) as viewer:
        start = max([e.id for e in api.events(limit=1000)], default=0)
        seen = collect(viewer.stream_events(after=start))
        api.create_vm("outside")
        with virtpool.Client(api.url, api.token, project="narrow") as admin_in_narrow:
            admin_in_narrow.create_vm("inside")
        assert seen.get(timeout=30).vm == "inside"
        with pytest.raises(virtpool.NotFound):
            next(viewer.stream_events(project="default"))
    api.delete_vm("outside")
    with virtpool.Client(api.url, api.token, project="narrow") as admin_in_narrow:
        admin_in_narrow.delete_vm("inside")


def test_last_event_id_resumes_after_that_event(api_server: Server) -> None:
    api = api_server.api()
    api.create_vm("resume1")
    api.create_vm("resume2")
    history = api.events(vm="resume1") + api.events(vm="resume2")
    first, second = history[0], history[-1]
    with httpx.stream("GET", f"{api.url}/api/v1/events/stream",
                      headers={"Authorization": f"Bearer {api.token}", "Last-Event-ID": str(first.id)},
                      params={"kind": "vm.state"}, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        ids = []
        for line in lines:
            if line.startswith("id:"):
                ids.append(int(line.removeprefix("id:").strip()))
            if second.id in ids:
                break
    assert first.id not in ids and ids[0] > first.id
    api.delete_vm("resume1")
    api.delete_vm("resume2")


def test_quiet_stream_sends_heartbeat_comments(api_server: Server) -> None:
    api = api_server.api()
    last = max([e.id for e in api.events(limit=1000)], default=0)
    with httpx.stream("GET", f"{api.url}/api/v1/events/stream", params={"after": last, "vm": "nobody"},
                      headers={"Authorization": f"Bearer {api.token}"}, timeout=60) as response:
        line = next(line for line in response.iter_lines() if line)
    assert line.startswith(":")  # an SSE comment: keeps proxies and clients from timing out


def test_stream_needs_a_token(api_server: Server) -> None:
    response = httpx.get(f"{api_server.api().url}/api/v1/events/stream", timeout=30)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


def test_cli_follow_prints_events_as_they_happen(api_server: Server) -> None:
    proc = subprocess.Popen([VIRTPOOL, "events", "--follow", "--json", "--vm", "followed"],
                            env=api_server.env, stdout=subprocess.PIPE, text=True)
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True).start()
        api_server.api().create_vm("followed")
        event = json.loads(lines.get(timeout=30))  # JSON Lines: one event, one line
        while event["data"]["state"] != "stopped":
            event = json.loads(lines.get(timeout=30))
        assert event["vm"] == "followed" and event["project"] == "default"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    api_server.api().delete_vm("followed")


def test_a_stream_ends_once_its_token_is_revoked(api_server: Server) -> None:
    admin = api_server.api()
    secret = admin.create_token("sse-revoked", "viewer", project="default").token
    ended = threading.Event()

    def follow() -> None:
        with httpx.stream("GET", f"{admin.url}/api/v1/events/stream", timeout=60,
                          headers={"Authorization": f"Bearer {secret}"}) as response:
            assert response.status_code == 200
            for _ in response.iter_lines():
                pass
        ended.set()

    threading.Thread(target=follow, daemon=True).start()
    assert not ended.wait(2)  # an open stream stays open
    admin.revoke_token("sse-revoked")
    assert ended.wait(30), "the stream of a revoked token is still open"
