"""Claims of VM uid ranges against the real kernel's flock, in a claims dir of the test's own."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from virtpool.model.errors import OperationFailed
from virtpool.node.sandbox import uid_ranges
from virtpool.node.sandbox.uid_ranges import RANGE_SIZE, UidRange, claim


@pytest.fixture
def claims(tmp_path: Path) -> Path:
    return tmp_path / "claims"


def data_dir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def test_two_data_dirs_get_ranges_that_do_not_overlap(tmp_path: Path, claims: Path) -> None:
    a = claim(data_dir(tmp_path, "a"), claims)
    b = claim(data_dir(tmp_path, "b"), claims)
    assert a.range != b.range
    uids_a = {a.range.user(n).uid for n in (0, RANGE_SIZE - 1)}
    uids_b = {b.range.user(n).uid for n in (0, RANGE_SIZE - 1)}
    assert max(uids_a) < min(uids_b) or max(uids_b) < min(uids_a)
    record = json.loads((tmp_path / "a" / "uid-range").read_text())
    assert record == {"index": a.range.index, "first_uid": a.range.first_uid, "size": RANGE_SIZE}
    a.release()
    b.release()


def test_a_restarted_agent_gets_its_range_back_and_a_stopped_ones_range_stays_taken(
        tmp_path: Path, claims: Path) -> None:
    a_dir, b_dir = data_dir(tmp_path, "a"), data_dir(tmp_path, "b")
    a = claim(a_dir, claims)
    b = claim(b_dir, claims)
    a.release()  # platform A stops; its disks still belong to its uids
    c = claim(data_dir(tmp_path, "c"), claims)
    assert c.range not in (a.range, b.range)
    again = claim(a_dir, claims)
    assert again.range == a.range
    for held in (b, c, again):
        held.release()


def test_a_second_agent_on_a_held_data_dir_is_refused(tmp_path: Path, claims: Path) -> None:
    a_dir = data_dir(tmp_path, "a")
    held = claim(a_dir, claims)
    with pytest.raises(OperationFailed, match="held by another agent"):
        claim(a_dir, claims)
    copy = tmp_path / "copy"
    shutil.copytree(a_dir, copy)  # a copied data dir records the same range
    with pytest.raises(OperationFailed, match="held by another agent"):
        claim(copy, claims)
    held.release()
    assert claim(a_dir, claims).range == held.range


def test_the_range_of_a_removed_data_dir_is_handed_out_again(tmp_path: Path, claims: Path) -> None:
    gone = data_dir(tmp_path, "gone")
    first = claim(gone, claims)
    first.release()
    shutil.rmtree(gone)
    assert claim(data_dir(tmp_path, "new"), claims).range == first.range


def test_agents_starting_at_once_pick_different_ranges(tmp_path: Path, claims: Path) -> None:
    dirs = [data_dir(tmp_path, f"d{n}") for n in range(8)]
    got: list[uid_ranges.UidRangeClaim] = []
    lock = threading.Lock()

    def start(path: Path) -> None:
        held = claim(path, claims)
        with lock:
            got.append(held)

    threads = [threading.Thread(target=start, args=(d,)) for d in dirs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({held.range for held in got}) == len(dirs)
    for held in got:
        held.release()


def test_a_damaged_record_is_refused_with_what_to_do(tmp_path: Path, claims: Path) -> None:
    a_dir = data_dir(tmp_path, "a")
    (a_dir / "uid-range").write_text("{not json")
    with pytest.raises(OperationFailed, match="not the uid range record") as err:
        claim(a_dir, claims)
    assert "remove it" in str(err.value.hint)
    (a_dir / "uid-range").write_text(json.dumps({"index": -1}))
    with pytest.raises(OperationFailed, match="names no valid uid range"):
        claim(a_dir, claims)


def test_range_numbers_stay_below_two_to_the_31() -> None:
    last = UidRange(uid_ranges.RANGE_COUNT - 1)
    assert last.user(RANGE_SIZE - 1).uid < 2**31
    with pytest.raises(ValueError):
        UidRange(0).user(RANGE_SIZE)
