"""Progress of an image sent to a host that lacks it (the host's agent fetches it from the
pool's image store before it can make the VM's disk): bytes counted as they stream, reported as
a percent and a sentence at most every ``STEP_PCT`` percent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from virtpool.model.image import ImageInfo

MIB = 1024 * 1024
STEP_PCT = 5
# The share of a create-and-boot operation's progress its image fetch takes (0..FETCH_SHARE):
# the steps after it (disk created, booting) start at 30 (control/vm_operations.py).
FETCH_SHARE = 25

Report = Callable[[int, str], None]  # (operation progress 0..FETCH_SHARE, message)
# A server that lacks the image fetches it from a peer first (the first half of the share),
# then sends it to the host (the second half).
TO_SERVER = (0, FETCH_SHARE // 2)
TO_HOST = (FETCH_SHARE // 2, FETCH_SHARE)


class FetchProgress:
    """Counts the bytes of one image's files on their way ``to`` ("host 'h2'"), reported as
    operation progress within ``span``."""

    def __init__(self, image: ImageInfo, to: str, report: Report,
                 span: tuple[int, int] = TO_HOST) -> None:
        self._image = image.name
        self._to = to
        self._report = report
        self._span = span
        self.total = sum(f.size for f in (image.kernel, image.initrd, image.disk) if f is not None)
        self.sent = 0
        self._reported = -1

    def wrap(self, files: Mapping[str, Iterable[bytes]]) -> dict[str, Iterator[bytes]]:
        """The same streams, counted."""
        self._say()
        return {name: self._count(stream) for name, stream in files.items()}

    def _count(self, stream: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in stream:
            self.sent += len(chunk)
            self._say()
            yield chunk

    @property
    def percent(self) -> int:
        return 100 if not self.total else min(100, self.sent * 100 // self.total)

    def _say(self) -> None:
        percent = self.percent
        if self._reported >= 0 and percent < 100 and percent - self._reported < STEP_PCT:
            return
        self._reported = percent
        low, high = self._span
        self._report(low + percent * (high - low) // 100,
                     f"fetching image '{self._image}' to {self._to}: "
                     f"{self.sent / MIB:.1f} of {self.total / MIB:.1f} MiB ({percent}%)")
