"""An upload whose sender goes silent (a cut link sends no FIN) is given up and removed by the
agent, without waiting for TCP to notice: the ASGI app is driven directly, with a sender that
sends half a file and then nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from virtpool.node.service import app as agent_app

UPLOAD = "0123456789abcdef0123456789abcdef"


def _scope(path: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "PUT",
            "scheme": "https", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": [(b"content-length", b"2097152")],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}


async def _put(app: Any, path: str, parts: list[bytes], then_silent: bool) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []
    queue: list[dict[str, Any]] = [{"type": "http.request", "body": p, "more_body": True} for p in parts]
    if not then_silent:
        queue.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()  # the link is cut: nothing more, not even a disconnect
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(_scope(path), receive, send), 30)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(agent_app, "UPLOAD_STALL_S", 0.5)
    built = agent_app.create_app(None, agent_app.Revocations(tmp_path / "revoked.json"),  # type: ignore[arg-type]
                                 tmp_path / "uploads")
    built.dependency_overrides[agent_app._caller] = lambda: None
    return built


def test_a_silent_sender_gets_408_and_its_half_file_is_removed(app: Any, tmp_path: Path) -> None:
    status, body = asyncio.run(_put(app, f"/v1/uploads/{UPLOAD}/disk", [b"x" * 65536], then_silent=True))
    assert status == 408, body
    assert b"UploadStalled" in body and b"send the image again" in body
    assert list((tmp_path / "uploads").iterdir()) == []


def test_an_upload_that_keeps_sending_is_kept(app: Any, tmp_path: Path) -> None:
    status, body = asyncio.run(_put(app, f"/v1/uploads/{UPLOAD}/disk", [b"x" * 1024] * 4, then_silent=False))
    assert status == 204, body
    assert (tmp_path / "uploads" / UPLOAD / "disk").read_bytes() == b"x" * 4096
