"""Automatic memory balancing: which balloons to move, given the host's memory and the guests'.

Pure. The control plane measures (host available memory, each guest's balloon size and free
memory), calls :func:`plan`, applies the targets through the agent and records each decision.

Rules:
* Under pressure (host available below the threshold) take the shortfall from the guests with
  the most free memory, leaving each some free headroom and never going below its floor.
* When the pressure is gone (available above threshold + hysteresis) give memory back, to the
  guests with the least free memory first, never above what the user assigned.
* The hysteresis band keeps the two from chasing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_FLOOR_FRACTION = 0.5  # a guest keeps at least half of what it was assigned
MIN_FLOOR_MIB = 96  # below this our guests' kernels start killing processes
GUEST_HEADROOM_MIB = 32  # free memory a reclaim leaves each guest, so it is not squeezed dry
DEFAULT_HYSTERESIS_MIB = 64
MIN_STEP_MIB = 8  # smaller moves are not worth a balloon round-trip


@dataclass(frozen=True)
class GuestMemory:
    name: str
    current_mib: float  # what the guest has now (balloon actual)
    free_mib: float | None  # as the guest's balloon statistics report it; None if unknown
    assigned_mib: int  # what the user gave it: the most the balancer gives back


@dataclass(frozen=True)
class PolicyConfig:
    threshold_mib: int
    hysteresis_mib: int = DEFAULT_HYSTERESIS_MIB
    floor_fraction: float = DEFAULT_FLOOR_FRACTION

    def floor(self, guest: GuestMemory) -> float:
        return max(MIN_FLOOR_MIB, guest.assigned_mib * self.floor_fraction)


@dataclass(frozen=True)
class BalloonMove:
    name: str
    from_mib: int
    to_mib: int
    reason: str


def plan(host_available_mib: float, guests: list[GuestMemory], config: PolicyConfig) -> list[BalloonMove]:
    """The balloon moves that bring host available memory back into the band, or []."""
    if host_available_mib < config.threshold_mib:
        return _reclaim(config.threshold_mib - host_available_mib, host_available_mib, guests, config)
    surplus = host_available_mib - config.threshold_mib - config.hysteresis_mib
    if surplus > 0:
        return _give_back(surplus, host_available_mib, guests)
    return []


def _reclaim(shortfall: float, available: float, guests: list[GuestMemory],
             config: PolicyConfig) -> list[BalloonMove]:
    moves = []
    known = [g for g in guests if g.free_mib is not None]
    for guest in sorted(known, key=lambda g: (-(g.free_mib or 0), g.name)):
        if shortfall <= 0:
            break
        spare = min((guest.free_mib or 0) - GUEST_HEADROOM_MIB, guest.current_mib - config.floor(guest))
        take = int(min(spare, shortfall))
        if take < MIN_STEP_MIB:
            continue
        shortfall -= take
        moves.append(BalloonMove(
            guest.name, round(guest.current_mib), round(guest.current_mib) - take,
            f"host available memory {available:.0f} MiB is under the {config.threshold_mib} MiB "
            f"threshold; '{guest.name}' had {guest.free_mib:.0f} MiB free",
        ))
    return moves


def _give_back(surplus: float, available: float, guests: list[GuestMemory]) -> list[BalloonMove]:
    moves = []
    for guest in sorted(guests, key=lambda g: (g.free_mib if g.free_mib is not None else 0, g.name)):
        if surplus <= 0:
            break
        give = int(min(guest.assigned_mib - guest.current_mib, surplus))
        if give < MIN_STEP_MIB:
            continue
        surplus -= give
        moves.append(BalloonMove(
            guest.name, round(guest.current_mib), round(guest.current_mib) + give,
            f"host available memory {available:.0f} MiB is back above the threshold; "
            f"returning memory to '{guest.name}'",
        ))
    return moves
