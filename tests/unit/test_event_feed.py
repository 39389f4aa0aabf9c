"""The agent's event feed survives a restart of the agent and of the reader (node/events.py)."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

from virtpool.node.events import EventFeed


def test_events_are_numbered_and_read_after_a_cursor(tmp_path: Path) -> None:
    feed = EventFeed(tmp_path / "events.jsonl")
    for n in range(3):
        feed.append("vm.exited", f"vm{n}", {"guest_initiated": False})
    assert [e.seq for e in feed.read(0)] == [1, 2, 3]
    assert [e.vm_id for e in feed.read(2)] == ["vm2"]
    assert feed.read(3) == []


def test_a_restarted_agent_keeps_numbering_and_serves_what_a_reader_missed(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    first = EventFeed(path)
    first.append("vm.exited", "a")
    cursor = first.read(0)[-1].seq  # the reader handled 1
    first.append("vm.powered_off", "b")  # then the reader went away; 2 happened meanwhile
    again = EventFeed(path)  # the agent restarted
    again.append("vm.exited", "b")
    assert [(e.seq, e.kind, e.vm_id) for e in again.read(cursor)] == [
        (2, "vm.powered_off", "b"), (3, "vm.exited", "b")]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_line_cut_short_by_a_crash_loses_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    EventFeed(path).append("vm.exited", "a")
    with path.open("a") as handle:
        handle.write('{"seq": 2, "kind": "vm.ex')
    feed = EventFeed(path)
    assert [e.seq for e in feed.read(0)] == [1]
    assert feed.append("vm.exited", "b").seq == 2


def test_only_the_newest_are_kept_and_a_reader_far_behind_starts_at_the_oldest(tmp_path: Path) -> None:
    feed = EventFeed(tmp_path / "events.jsonl", keep=5)
    for n in range(12):
        feed.append("vm.balloon", "v", {"actual_mib": n})
    seqs = [e.seq for e in EventFeed(tmp_path / "events.jsonl", keep=5).read(0)]
    assert seqs[-1] == 12 and len(seqs) <= 10 and seqs == sorted(seqs)


def test_a_reader_waiting_is_woken_by_a_new_event(tmp_path: Path) -> None:
    feed = EventFeed(tmp_path / "events.jsonl")
    threading.Timer(0.2, feed.append, args=("vm.exited", "late")).start()
    began = time.monotonic()
    events = feed.read(0, wait=30)
    assert [e.vm_id for e in events] == ["late"]
    assert time.monotonic() - began < 29  # woken by the event, not by the wait running out


def test_a_stopping_agent_answers_a_waiting_long_poll_at_once(tmp_path: Path) -> None:
    feed = EventFeed(tmp_path / "events.jsonl")
    answers: list[list[object]] = []
    reader = threading.Thread(target=lambda: answers.append(feed.read(0, wait=60)))
    reader.start()
    time.sleep(0.2)
    feed.release_readers()
    reader.join(timeout=10)
    assert not reader.is_alive() and answers == [[]]
    assert feed.read(0, wait=60) == []  # and a later one does not wait either
    feed.append("vm.exited", "vm-1")
    assert [e.kind for e in feed.read(0, wait=60)] == ["vm.exited"]
