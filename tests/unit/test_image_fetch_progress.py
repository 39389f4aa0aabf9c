"""The progress of an image sent to a host: bytes counted as they stream, reported in steps."""

from __future__ import annotations

from virtpool.control.vms.fetch import FETCH_SHARE, TO_HOST, FetchProgress
from virtpool.model.image import ImageFile, ImageInfo

MIB = 1024 * 1024


def test_progress_counts_the_bytes_of_every_file_and_ends_at_100_percent() -> None:
    image = ImageInfo(name="default", kernel=ImageFile(path="kernel", size=6 * MIB, sha256="0" * 64),
                      initrd=ImageFile(path="initrd", size=4 * MIB, sha256="1" * 64),
                      size=10 * MIB, created_at="now")
    heard: list[tuple[int, str]] = []
    progress = FetchProgress(image, "host 'h2'", lambda pct, msg: heard.append((pct, msg)))
    streams = progress.wrap({"kernel": [b"k" * MIB] * 6, "initrd": [b"i" * (MIB // 2)] * 8})
    # The second half of the fetch's share: a server that lacks the image fetches it first.
    assert heard == [(TO_HOST[0], "fetching image 'default' to host 'h2': 0.0 of 10.0 MiB (0%)")]
    sent = sum(len(chunk) for stream in streams.values() for chunk in stream)
    assert sent == progress.sent == 10 * MIB
    percents = [int(msg.rsplit("(", 1)[1].rstrip("%)")) for _, msg in heard]
    assert percents == sorted(percents) and percents[-1] == 100
    assert all(b - a >= 5 for a, b in zip(percents, percents[1:]))  # in steps, not per chunk
    assert heard[-1] == (FETCH_SHARE, "fetching image 'default' to host 'h2': 10.0 of 10.0 MiB (100%)")
