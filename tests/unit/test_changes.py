"""The change counter waiters block on: woken by a notify, bounded by the timeout."""

import threading

from virtpool.control.changes import Changes


def test_a_waiter_wakes_when_the_value_changes_and_is_notified() -> None:
    changes, box = Changes(), {"value": 0}

    def bump() -> None:
        box["value"] = 1
        changes.notify()

    threading.Timer(0.2, bump).start()
    assert changes.wait_until(lambda: box["value"], lambda v: v == 1, timeout=30) == 1


def test_a_waiter_returns_the_last_value_at_timeout() -> None:
    assert Changes().wait_until(lambda: "same", lambda v: v == "other", timeout=0.1) == "same"
