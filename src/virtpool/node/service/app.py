"""The agent's HTTPS API: ``LocalAgent``'s calls, one route each, for the control plane only.

Every request must come with a certificate of the pool CA (the TLS layer insists) whose common
name is the control plane's and whose serial is not revoked (checked here, on every request:
another host's agent holds a certificate of the same CA and must not drive this one). Errors
travel as problem+json with virtpool's error class in ``error``, so that the remote agent
raises the same class the local one would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from virtpool import __version__, exec_socket
from virtpool.model import exec_lines
from virtpool.model.agent import CONTRACT_VERSION, AgentEvent
from virtpool.model.backup import BackupInfo
from virtpool.model.certs import CONTROL_PLANE_CN
from virtpool.model.errors import InvalidRequest, Unauthorized, VirtpoolError
from virtpool.model.image import Firmware, ImageInfo
from virtpool.model.net_change import Change
from virtpool.model.network import HostNetworkInput
from virtpool.model.snapshot import CloneKind, SnapshotInfo
from virtpool.model.spec import ExecResult, HostInfo, LiveChanges, VMSpec
from virtpool.model.vm import VMUsage
from virtpool.mtls import peer_of
from virtpool.node.agent import LocalAgent

CHUNK = 1 << 20
MAX_WAIT_S = 30.0
MAX_LOG_CHUNK = 4 << 20
UPLOAD_FIELDS = ("kernel", "initrd", "disk")
UPLOAD_TTL_S = 3600.0  # an upload not imported within this is abandoned
# A sender whose link was cut sends no FIN either, and TCP may take minutes to notice: an upload
# that gets no byte for this long is given up and removed. The control plane streams from its
# own disk, so a live upload never pauses nearly this long.
UPLOAD_STALL_S = 60.0


class UploadStalled(VirtpoolError):
    """An upload's sender stopped sending (its link was cut, or it hung)."""

    status = 408


class Revocations:
    """Serials the control plane said are revoked; kept on disk across restarts of the agent."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        try:
            self._serials = frozenset(json.loads(path.read_text()))
        except (OSError, ValueError):
            self._serials = frozenset()

    def __contains__(self, serial: str) -> bool:
        return serial in self._serials

    def update(self, serials: list[str]) -> None:
        fresh = frozenset(serials)
        with self._lock:
            if fresh == self._serials:
                return
            self._serials = fresh
            staging = self._path.with_suffix(".tmp")
            staging.write_text(json.dumps(sorted(fresh)))
            os.replace(staging, self._path)


def _problem(err: VirtpoolError) -> JSONResponse:
    return JSONResponse({"status": err.status, "title": err.title, "detail": err.message,
                         "hint": err.hint, "error": type(err).__name__}, status_code=err.status,
                        media_type="application/problem+json")


class StartBody(BaseModel):
    spec: VMSpec
    slot: int = Field(ge=0)


class DiskBody(BaseModel):
    image: str
    disk_mib: int = Field(gt=0)


class ExecBody(BaseModel):
    argv: list[str] = Field(min_length=1)
    timeout: float = Field(gt=0)
    stdin: str | None = None


class SnapshotBody(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    memory: bool = False


class CloneBody(BaseModel):
    source: str
    image: str
    snapshot: str | None = None
    kind: CloneKind = "full"
    keep_ready: int = Field(default=0, ge=0, le=16)


class BackupBody(BaseModel):
    target: str = Field(min_length=1, max_length=4096)
    incremental: bool = False
    vm: str
    image: str


class RestoreBackupBody(BaseModel):
    source: str = Field(min_length=1, max_length=4096)


class ImportBody(BaseModel):
    upload: str = Field(pattern=r"^[0-9a-f]{32}$")
    kernel_args: str = ""
    firmware: Firmware | None = None


class ReceiveBody(BaseModel):
    upload: str = Field(pattern=r"^[0-9a-f]{32}$")
    image: ImageInfo


def _caller(request: Request) -> None:
    check_caller(request.scope, request.app.state.revoked)


# Every route but the console's (a websocket checks its caller itself) takes this.
Caller = Annotated[None, Depends(_caller)]


def _sweep_uploads(uploads: Path, older_than_s: float = UPLOAD_TTL_S) -> None:
    """Remove uploads that were never imported (the control plane stopped between sending the
    files and asking for the import)."""
    cutoff = time.time() - older_than_s
    for entry in uploads.iterdir():
        try:
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
        except FileNotFoundError:
            pass


def create_app(agent: LocalAgent, revoked: Revocations, uploads: Path) -> FastAPI:
    app = FastAPI(title="virtpool agent", version=__version__, docs_url=None, redoc_url=None)
    uploads.mkdir(mode=0o700, exist_ok=True)
    _sweep_uploads(uploads, older_than_s=0)  # at start no upload can be under way

    @app.exception_handler(VirtpoolError)
    async def virtpool_error(_: Request, err: VirtpoolError) -> JSONResponse:
        return _problem(err)

    app.state.revoked = revoked
    @app.get("/v1/version")
    def version(_: Caller) -> dict[str, str]:
        return {"version": __version__, "contract": CONTRACT_VERSION}

    @app.get("/v1/host", response_model=HostInfo)
    def host(_: Caller) -> HostInfo:
        return agent.host_info()

    @app.get("/v1/ports/{port}")
    def port_free(port: int, _: Caller) -> bool:
        return agent.check_port_free(port)

    @app.get("/v1/images", response_model=list[ImageInfo])
    def images(_: Caller) -> list[ImageInfo]:
        return agent.list_images()

    @app.get("/v1/images/{name}", response_model=ImageInfo)
    def image(name: str, _: Caller) -> ImageInfo:
        return agent.get_image(name)

    @app.delete("/v1/images/{name}", status_code=204)
    def delete_image(name: str, _: Caller) -> Response:
        agent.delete_image(name)
        return Response(status_code=204)

    @app.post("/v1/images/{name}/build")
    def build(name: str, _: Caller) -> dict[str, Any]:
        info, built = agent.build_image(name)
        return {"image": info.model_dump(mode="json"), "built": built}

    @app.get("/v1/images/{name}/files/{file}")
    def image_file(name: str, file: str, _: Caller) -> StreamingResponse:
        return StreamingResponse(agent.image_file(name, file), media_type="application/octet-stream")

    @app.put("/v1/uploads/{upload}/{field}", status_code=204)
    async def upload(upload: str, field: str, request: Request, _: Caller) -> Response:
        if field not in UPLOAD_FIELDS or len(upload) != 32 or not all(c in "0123456789abcdef" for c in upload):
            raise InvalidRequest(f"no upload field '{field}'", hint=f"one of {', '.join(UPLOAD_FIELDS)}")
        directory = uploads / upload
        await asyncio.to_thread(_sweep_uploads, uploads)
        directory.mkdir(mode=0o700, exist_ok=True)
        try:
            with (directory / field).open("wb") as out:
                chunks = request.stream()
                while True:
                    try:
                        chunk = await asyncio.wait_for(anext(chunks), UPLOAD_STALL_S)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        raise UploadStalled(f"no byte of upload {upload}/{field} arrived for "
                                            f"{UPLOAD_STALL_S:.0f} s: it was given up",
                                            hint="send the image again") from None
                    await asyncio.to_thread(out.write, chunk)
        except BaseException:
            # The sender went away mid-stream (its link was cut, it gave up): nothing of it is kept.
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return Response(status_code=204)

    @app.post("/v1/images/{name}", response_model=ImageInfo)
    def import_image(name: str, body: ImportBody, _: Caller) -> ImageInfo:
        directory = uploads / body.upload
        try:
            files = {f: _chunks(directory / f) for f in UPLOAD_FIELDS if (directory / f).exists()}
            return agent.import_image(name, files, kernel_args=body.kernel_args, firmware=body.firmware)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    @app.post("/v1/images/{name}/receive", response_model=ImageInfo)
    def receive_image(name: str, body: ReceiveBody, _: Caller) -> ImageInfo:
        if body.image.name != name:
            raise InvalidRequest("the image's name and the path differ")
        directory = uploads / body.upload
        try:
            files = {f: _chunks(directory / f) for f in UPLOAD_FIELDS if (directory / f).exists()}
            return agent.receive_image(body.image, files)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    @app.put("/v1/networks", response_model=list[Change])
    def networks(desired: HostNetworkInput, _: Caller) -> list[Change]:
        return agent.converge_networks(desired)

    @app.get("/v1/vms")
    def vm_ids(_: Caller) -> list[str]:
        return sorted(agent.vm_ids())

    @app.post("/v1/vms/{vm_id}/disk", status_code=204)
    def create_disk(vm_id: str, body: DiskBody, _: Caller) -> Response:
        agent.create_disk(_vm(vm_id), body.image, body.disk_mib)
        return Response(status_code=204)

    @app.post("/v1/vms/{vm_id}/disk/size", status_code=204)
    def resize_disk(vm_id: str, body: dict[str, int], _: Caller) -> Response:
        agent.resize_disk_offline(_vm(vm_id), int(body["disk_mib"]))
        return Response(status_code=204)

    @app.delete("/v1/vms/{vm_id}", status_code=204)
    def destroy(vm_id: str, _: Caller) -> Response:
        agent.destroy_vm(_vm(vm_id))
        return Response(status_code=204)

    @app.get("/v1/vms/{vm_id}/log")
    def log(vm_id: str, _: Caller, offset: Annotated[int, Query(ge=0)] = 0,
            limit: Annotated[int, Query(ge=1, le=MAX_LOG_CHUNK)] = 1 << 20) -> Response:
        data, next_offset = agent.read_log(_vm(vm_id), offset, limit)
        return Response(data, media_type="application/octet-stream", headers={"X-Next-Offset": str(next_offset)})

    @app.post("/v1/vms/{vm_id}/start")
    def start(vm_id: str, body: StartBody, _: Caller) -> dict[str, int]:
        return {"pid": agent.start_vm(_vm(vm_id), body.spec, body.slot)}

    @app.post("/v1/vms/{vm_id}/wait-ready", status_code=204)
    def wait_ready(vm_id: str, body: dict[str, float], _: Caller) -> Response:
        agent.wait_ready(_vm(vm_id), float(body["timeout"]))
        return Response(status_code=204)

    @app.post("/v1/vms/{vm_id}/stop")
    def stop(vm_id: str, body: dict[str, float], _: Caller) -> dict[str, str | None]:
        return {"method": agent.stop_vm(_vm(vm_id), float(body["timeout"]))}

    @app.post("/v1/vms/{vm_id}/kill", status_code=204)
    def kill(vm_id: str, _: Caller) -> Response:
        agent.kill_vm(_vm(vm_id))
        return Response(status_code=204)

    @app.post("/v1/vms/{vm_id}/pause", status_code=204)
    def pause(vm_id: str, _: Caller) -> Response:
        agent.pause_vm(_vm(vm_id))
        return Response(status_code=204)

    @app.post("/v1/vms/{vm_id}/resume", status_code=204)
    def resume(vm_id: str, _: Caller) -> Response:
        agent.resume_vm(_vm(vm_id))
        return Response(status_code=204)

    @app.post("/v1/vms/{vm_id}/exec", response_model=ExecResult)
    def exec_vm(vm_id: str, body: ExecBody, _: Caller) -> ExecResult:
        stdin = base64.b64decode(body.stdin) if body.stdin is not None else None
        return agent.exec_vm(_vm(vm_id), body.argv, body.timeout, stdin)

    @app.post("/v1/vms/{vm_id}/exec/stream")
    def exec_stream(vm_id: str, body: ExecBody, _: Caller) -> StreamingResponse:
        # The output as the command writes it (one NDJSON line each, model/exec_lines.py), so
        # that the control plane can relay it while the command still runs.
        stdin = base64.b64decode(body.stdin) if body.stdin is not None else None
        items = agent.exec_stream(_vm(vm_id), body.argv, body.timeout, stdin)
        return StreamingResponse(exec_lines.encode(items), media_type="application/x-ndjson")

    @app.get("/v1/vms/{vm_id}/snapshots", response_model=list[SnapshotInfo])
    def snapshots(vm_id: str, _: Caller) -> list[SnapshotInfo]:
        return agent.list_snapshots(_vm(vm_id))

    @app.post("/v1/vms/{vm_id}/snapshots", response_model=SnapshotInfo)
    def create_snapshot(vm_id: str, body: SnapshotBody, _: Caller) -> SnapshotInfo:
        return agent.create_snapshot(_vm(vm_id), body.name, memory=body.memory)

    @app.post("/v1/vms/{vm_id}/snapshots/{name}/restore", status_code=204)
    def restore_snapshot(vm_id: str, name: str, _: Caller) -> Response:
        agent.restore_snapshot(_vm(vm_id), name)
        return Response(status_code=204)

    @app.delete("/v1/vms/{vm_id}/snapshots/{name}", status_code=204)
    def delete_snapshot(vm_id: str, name: str, _: Caller) -> Response:
        agent.delete_snapshot(_vm(vm_id), name)
        return Response(status_code=204)

    @app.post("/v1/vms/{vm_id}/clone", status_code=204)
    def clone(vm_id: str, body: CloneBody, _: Caller) -> Response:
        agent.clone_disk(_vm(body.source), _vm(vm_id), image=body.image, snapshot=body.snapshot,
                         kind=body.kind, keep_ready=body.keep_ready)
        return Response(status_code=204)

    @app.post("/v1/vms/{vm_id}/backups", response_model=BackupInfo)
    def backup(vm_id: str, body: BackupBody, _: Caller) -> BackupInfo:
        return agent.backup_vm(_vm(vm_id), body.target, incremental=body.incremental, vm=body.vm,
                               image=body.image)

    @app.get("/v1/backups", response_model=BackupInfo)
    def read_backup(source: Annotated[str, Query(min_length=1, max_length=4096)], _: Caller) -> BackupInfo:
        return agent.read_backup(source)

    @app.post("/v1/vms/{vm_id}/backups/restore", status_code=204)
    def restore_backup(vm_id: str, body: RestoreBackupBody, _: Caller) -> Response:
        agent.restore_backup(_vm(vm_id), body.source)
        return Response(status_code=204)

    @app.post("/v1/vms/{vm_id}/live", status_code=204)
    def live(vm_id: str, changes: LiveChanges, _: Caller) -> Response:
        agent.apply_live(_vm(vm_id), changes)
        return Response(status_code=204)

    @app.get("/v1/vms/{vm_id}/stats", response_model=VMUsage)
    def stats(vm_id: str, _: Caller) -> VMUsage:
        return agent.vm_stats(_vm(vm_id))

    @app.post("/v1/vms/{vm_id}/adopt")
    def adopt(vm_id: str, body: dict[str, str], _: Caller) -> dict[str, str | None]:
        return {"status": agent.adopt_vm(_vm(vm_id), body["name"])}

    @app.get("/v1/events", response_model=list[AgentEvent])
    def events(_: Caller, after: Annotated[int, Query(ge=0)] = 0,
               wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0.0) -> list[AgentEvent]:
        return agent.events(after, wait)

    @app.websocket("/v1/vms/{vm_id}/exec")
    async def exec_ws(websocket: WebSocket, vm_id: str) -> None:
        # A command whose input streams while it runs (virtpool/exec_socket.py).
        try:
            check_caller(websocket.scope, revoked)
        except VirtpoolError as err:
            await websocket.close(code=4403, reason=err.message[:120])
            return
        await websocket.accept()
        await exec_socket.serve(websocket, lambda argv, timeout, stdin: agent.exec_stream(
            _vm(vm_id), argv, timeout, stdin))

    @app.websocket("/v1/vms/{vm_id}/console")
    async def console(websocket: WebSocket, vm_id: str) -> None:
        try:
            check_caller(websocket.scope, revoked)
            stream = await agent.open_console(_vm(vm_id))
        except VirtpoolError as err:
            await websocket.close(code=4403 if isinstance(err, Unauthorized) else 4502,
                                  reason=err.message[:120])
            return
        await websocket.accept()

        async def to_guest() -> None:
            while True:
                await stream.write(await websocket.receive_bytes())

        async def to_caller() -> None:
            while data := await stream.read():
                await websocket.send_bytes(data)

        tasks = [asyncio.create_task(to_guest()), asyncio.create_task(to_caller())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except WebSocketDisconnect:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await stream.close()
            try:
                await websocket.close()
            except RuntimeError:
                pass

    return app


def check_caller(scope: Any, revoked: Revocations) -> None:
    """The request comes from the pool's control plane, with a certificate not revoked."""
    peer = peer_of(scope)
    if peer is None:
        raise Unauthorized("this agent answers its pool's control plane only",
                           hint="call with the control plane's certificate of the pool CA")
    if peer.common_name != CONTROL_PLANE_CN:
        raise Unauthorized(f"'{peer.common_name}' is not this pool's control plane",
                           hint="agents do not drive each other")
    if peer.serial in revoked:
        raise Unauthorized("this certificate was revoked", hint="the pool CA revoked it")


def _vm(vm_id: str) -> str:
    if not vm_id or len(vm_id) > 64 or not all(c.isalnum() or c in "-_" for c in vm_id):
        raise InvalidRequest(f"'{vm_id}' is not a VM id")
    return vm_id


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk
