"""Sizes as people write them ("256M", "1G", "1.5GiB") and as virtpool stores them (MiB)."""

from __future__ import annotations

import re

from virtpool.model.errors import InvalidRequest

# A bare number is MiB; "B" alone (bytes) is refused rather than read as MiB.
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:i?B)?)?\s*", re.IGNORECASE)
_FACTOR_MIB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_size_mib(text: str | int, *, what: str = "size") -> int:
    """Parse a size into whole MiB; a bare number means MiB (as QEMU's ``-m`` does)."""
    if isinstance(text, int):
        return text
    match = _SIZE.fullmatch(text)
    if not match:
        raise InvalidRequest(
            f"cannot read {what} '{text}'",
            hint="write a number with an optional unit, e.g. 512M, 2G or 1.5G",
        )
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    mib = number * _FACTOR_MIB[unit]
    if mib != int(mib):
        raise InvalidRequest(f"{what} '{text}' is not a whole number of MiB", hint="use e.g. 512M")
    return int(mib)


def format_mib(mib: int) -> str:
    """1024 → '1G', 1536 → '1536M': the shortest exact form."""
    if mib and mib % (1024 * 1024) == 0:
        return f"{mib // (1024 * 1024)}T"
    if mib and mib % 1024 == 0:
        return f"{mib // 1024}G"
    return f"{mib}M"


_BYTES = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:i?B)?|B)?\s*", re.IGNORECASE)
_FACTOR_BYTES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_bytes(text: str | int, *, what: str = "size") -> int:
    """Parse a byte count; a bare number means bytes ("50M" → 52428800)."""
    if isinstance(text, int):
        return text
    match = _BYTES.fullmatch(text)
    if not match:
        raise InvalidRequest(f"cannot read {what} '{text}'", hint="write e.g. 1048576, 512K or 20M")
    return int(float(match.group(1)) * _FACTOR_BYTES[(match.group(2) or "").upper()])


MAX_CPU_INDEX = 4096


def parse_cpu_list(text: str) -> list[int]:
    """'0,2-3' → [0, 2, 3]; 'any' → [] (no pinning)."""
    if text.strip().lower() == "any":
        return []
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            low, high = int(first), int(last or first)
            if not 0 <= low <= high < MAX_CPU_INDEX:
                raise ValueError(part)
            cpus.update(range(low, high + 1))
    except ValueError:
        raise InvalidRequest(f"cannot read CPU list '{text}'", hint="write e.g. 0,2-3 or any") from None
    return sorted(cpus)
