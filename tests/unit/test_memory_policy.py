"""The memory balancing policy: who gives up memory under pressure, and who gets it back."""

from virtpool.model.memory_policy import GuestMemory, PolicyConfig, plan

CONFIG = PolicyConfig(threshold_mib=256, hysteresis_mib=64)


def guest(name: str, current: float, free: float | None, assigned: int = 1024) -> GuestMemory:
    return GuestMemory(name=name, current_mib=current, free_mib=free, assigned_mib=assigned)


def test_no_move_inside_the_band() -> None:
    guests = [guest("a", 1024, 800)]
    assert plan(256, guests, CONFIG) == []
    assert plan(256 + 64, guests, CONFIG) == []


def test_pressure_takes_from_the_guest_with_most_free_memory_first() -> None:
    guests = [guest("a", 1024, 100), guest("b", 1024, 700)]
    moves = plan(156, guests, CONFIG)  # 100 MiB short
    assert [(m.name, m.from_mib, m.to_mib) for m in moves] == [("b", 1024, 924)]
    assert "under the 256 MiB threshold" in moves[0].reason


def test_a_large_shortfall_spreads_over_guests_and_respects_headroom_and_floor() -> None:
    guests = [guest("a", 1024, 900), guest("b", 1024, 300)]
    moves = {m.name: m for m in plan(-2000, guests, CONFIG)}
    # The floor is half the assignment (512): a can give at most 512 though it has 900 free.
    assert moves["a"].to_mib == 512
    # b keeps 32 MiB of free headroom.
    assert moves["b"].to_mib == 1024 - (300 - 32)


def test_guests_without_statistics_are_left_alone_under_pressure() -> None:
    assert plan(0, [guest("a", 1024, None)], CONFIG) == []


def test_tiny_moves_are_skipped() -> None:
    assert plan(250, [guest("a", 1024, 900)], CONFIG) == []  # 6 MiB short: below the step


def test_relief_gives_back_to_the_neediest_guest_first_never_above_assignment() -> None:
    guests = [guest("a", 600, 500), guest("b", 700, 20), guest("c", 1024, 10)]
    moves = plan(256 + 64 + 200, guests, CONFIG)  # 200 MiB spare
    assert [(m.name, m.to_mib) for m in moves] == [("b", 900)]
    moves = plan(256 + 64 + 2000, guests, CONFIG)
    assert {m.name: m.to_mib for m in moves} == {"a": 1024, "b": 1024}


def test_floor_never_below_the_minimum() -> None:
    small = guest("s", 128, 100, assigned=128)
    moves = plan(-500, [small], CONFIG)
    assert all(m.to_mib >= 96 for m in moves)
