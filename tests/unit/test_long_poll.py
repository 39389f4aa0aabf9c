"""Long polls hold worker threads: beyond MAX_WAITERS at once, a long poll answers at once."""

from contextlib import ExitStack

from virtpool.api.long_poll import MAX_WAITERS, waiting


def test_long_polls_beyond_the_limit_do_not_wait_and_slots_come_back() -> None:
    with ExitStack() as stack:
        granted = [stack.enter_context(waiting(30.0)) for _ in range(MAX_WAITERS)]
        assert granted == [30.0] * MAX_WAITERS
        with waiting(30.0) as extra:
            assert extra == 0.0
    with waiting(30.0) as again:
        assert again == 30.0
