"""The SDK's plain request/response seam, on the standard library's ``http.client``.

Why not httpx here: importing httpx costs 120-150 ms, more than the whole budget of a CLI
command (`virtpool vm list` must start, ask and print in 0.2 s). ``http.client`` costs about a
tenth of that, keeps the connection alive between calls and does everything a JSON call needs.
httpx stays for what it does better (server-sent events, multipart uploads, in-process ASGI
transports in tests), imported only when one of those is used.

This module must import nothing of virtpool's and nothing heavy: the CLI's fast path uses it.
"""

from __future__ import annotations

import http.client
import json as jsonlib
import socket
import ssl
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit


class TransportError(Exception):
    """The server could not be reached, or the connection broke before an answer came."""


class CertificateRefused(TransportError):
    """The server's certificate is not the one this client trusts (the request was not sent)."""

    def __init__(self, err: ssl.SSLError) -> None:
        super().__init__(str(err))
        self.ssl_error = err


def _transport_error(err: BaseException) -> TransportError:
    if isinstance(err, ssl.SSLCertVerificationError):
        return CertificateRefused(err)
    return TransportError(str(err) or type(err).__name__)


class StreamRefused(Exception):
    """A streamed call was answered with an error; ``response`` holds it."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _parse_links(header: str) -> dict[str, dict[str, str]]:
    """``<url>; rel="next", <url2>; rel="prev"`` -> {"next": {"url": url, "rel": "next"}, …}."""
    links: dict[str, dict[str, str]] = {}
    for part in header.split(","):
        url, _, rest = part.strip().partition(";")
        link = {"url": url.strip().strip("<>")}
        for param in rest.split(";"):
            key, sep, value = param.strip().partition("=")
            if sep:
                link[key.strip()] = value.strip().strip('"')
        if "rel" in link:
            links[link["rel"]] = link
    return links


class Headers(dict[str, str]):
    """Response headers, looked up case-insensitively (keys are stored lower-case)."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)


class Response:
    """An answer: its status, headers (keys lower-case) and body, with httpx's names."""

    __slots__ = ("content", "headers", "reason_phrase", "status_code")

    def __init__(self, status_code: int, reason_phrase: str, headers: Headers, content: bytes) -> None:
        self.status_code = status_code
        self.reason_phrase = reason_phrase
        self.headers = headers
        self.content = content

    def __repr__(self) -> str:
        return f"<Response {self.status_code} {self.reason_phrase}>"

    @property
    def is_error(self) -> bool:
        return self.status_code >= 400

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    @property
    def links(self) -> dict[str, dict[str, str]]:
        return _parse_links(self.headers.get("link", ""))

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    def read(self) -> bytes:
        return self.content


def encode_params(params: Mapping[str, Any] | None) -> str:
    """Query parameters as httpx writes them: lists repeat the key, booleans are lower-case."""
    if not params:
        return ""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is None:
                continue
            pairs.append((key, ("true" if item else "false") if isinstance(item, bool) else str(item)))
    return urlencode(pairs)


# uvicorn closes an idle kept-alive connection after 5 s; a write (not safe to send twice) is
# not sent on a connection idle for this long, which the server may be closing right now.
IDLE_REUSE_S = 2.0


class StdlibTransport:
    """JSON calls to one server over one kept-alive ``http.client`` connection."""

    def __init__(self, base_url: str, headers: Mapping[str, str], timeout: float,
                 tls: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(base_url)
        self._https = parts.scheme == "https"
        # What the server's certificate is checked against (sdk/tls.py); the system's CAs when
        # none is given.
        self._tls = tls if tls is not None or not self._https else ssl.create_default_context()
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Accept": "application/json", "User-Agent": "virtpool-sdk", **headers}
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._last_used = 0.0

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                                         context=self._tls)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        else:
            self._conn.timeout = timeout
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        """The request target for ``path`` (relative to the base URL, or absolute)."""
        if path.startswith(("http://", "https://")):
            parts = urlsplit(path)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
        else:
            target = self._prefix + path
        query = encode_params(params)
        if query:
            target += ("&" if "?" in target else "?") + query
        return target

    def stream_lines(self, method: str, path: str, *, json: Any = None,
                     timeout: float | None = None) -> Iterator[bytes]:
        """The lines of one streamed answer, as they come, on a connection of its own; an error
        answer is read whole and returned as the first and only item's Response (raised by the
        caller). Lines end with b"\\n"."""
        conn = (http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._tls)
                if self._https else http.client.HTTPConnection(self._host, self._port, timeout=timeout))
        headers = {**self._headers, "Content-Type": "application/json", "Accept": "application/x-ndjson"}
        try:
            try:
                conn.request(method, self.url(path), body=jsonlib.dumps(json).encode(), headers=headers)
                answer = conn.getresponse()
            except (OSError, http.client.HTTPException) as err:
                raise _transport_error(err) from err
            if answer.status >= 400:
                raise StreamRefused(Response(answer.status, answer.reason,
                                             Headers((k.lower(), v) for k, v in answer.getheaders()), answer.read()))
            while True:
                try:
                    line = answer.readline()
                except (OSError, http.client.HTTPException) as err:
                    raise TransportError(str(err) or type(err).__name__) from err
                if not line:
                    return
                yield line
        finally:
            conn.close()

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                json: Any = None, timeout: float | None = ..., headers: Mapping[str, str] | None = None,
                **_: Any) -> Response:  # type: ignore[assignment]
        body = None if json is None else jsonlib.dumps(json).encode()
        headers = {**self._headers, **(headers or {})}
        if body is not None:
            headers["Content-Type"] = "application/json"
        target = self.url(path, params)
        wait = self.timeout if timeout is ... else timeout
        # A kept-alive connection the server closed meanwhile fails on first use: one retry on
        # a fresh connection, which can only fail for a real reason.
        if method not in ("GET", "HEAD") and time.monotonic() - self._last_used > IDLE_REUSE_S:
            self.close()
        for attempt in (1, 2):
            conn = self._connect(wait)
            try:
                conn.request(method, target, body=body, headers=headers)
                answer = conn.getresponse()
                content = answer.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as err:
                self.close()
                if attempt == 2 or method not in ("GET", "HEAD"):
                    raise TransportError(str(err) or type(err).__name__) from err
                continue
            except (OSError, http.client.HTTPException, socket.timeout) as err:
                self.close()
                raise _transport_error(err) from err
            self._last_used = time.monotonic()
            if answer.will_close:
                self.close()
            return Response(answer.status, answer.reason,
                            Headers((k.lower(), v) for k, v in answer.getheaders()), content)
        raise TransportError("no answer")  # not reached: the loop returns or raises
