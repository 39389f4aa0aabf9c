"""Image bytes from a peer server of the pool: ``GET /agent/v1/images/NAME/files/FILE`` on its
agent listener, over the pool's mutual TLS (this server shows its control-plane certificate,
and checks the peer's against the pool CA)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx

from virtpool.mtls import client_context

FETCH_TIMEOUT_S = httpx.Timeout(30.0, read=300.0)
CHUNK = 1 << 20


class PeerUnreachable(Exception):
    """The peer did not answer, or answered with an error: try another copy."""


class PeerImages:
    """Streams of image files from the servers that hold them."""

    def __init__(self, ca: Path, cert: Path, key: Path) -> None:
        self._http = httpx.Client(verify=client_context(ca, cert, key), timeout=FETCH_TIMEOUT_S)

    def probe(self, url: str, name: str, file: str) -> None:
        """Raise PeerUnreachable unless ``url`` answers for the file now (before its bytes
        are counted as on their way)."""
        try:
            reply = self._http.head(f"{url.rstrip('/')}/agent/v1/images/{name}/files/{file}")
        except httpx.HTTPError as err:
            raise PeerUnreachable(f"{type(err).__name__}: {err}") from err
        if reply.status_code != 200:
            raise PeerUnreachable(f"it answered {reply.status_code}")

    def stream(self, url: str, name: str, file: str) -> Iterator[bytes]:
        """The file's bytes as they come; PeerUnreachable if the peer fails on the way."""
        try:
            with self._http.stream("GET", f"{url.rstrip('/')}/agent/v1/images/{name}/files/{file}") as reply:
                if reply.status_code != 200:
                    raise PeerUnreachable(f"it answered {reply.status_code}")
                yield from reply.iter_bytes(CHUNK)
        except httpx.HTTPError as err:
            raise PeerUnreachable(f"{type(err).__name__}: {err}") from err

    def close(self) -> None:
        self._http.close()
