"""VMs: create, list, show, actions, exec, logs, and the serial console over a websocket."""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated

from fastapi import (
    APIRouter,
    Query,
    Request,
    Response,
    WebSocket,
    WebSocketDisconnect,
    status,
)
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from virtpool.api.deps import Caller, PoolDep, bearer
from virtpool.api.paging import MAX_ID, page_headers
from virtpool.api.routes.operations import ACCEPTED, accepted
from virtpool.control.vms import DEFAULT_STOP_TIMEOUT_S, MAX_EXEC_TIMEOUT_S
from virtpool.model.errors import InvalidRequest, VirtpoolError
from virtpool.model.spec import ExecResult, Resize, VMSpec
from virtpool.model.states import VMState
from virtpool.model.vm import ResizeResult, VMInfo, VMStats

# The console is a local socket until remote agents proxy it; the same peer check applies.
from virtpool.node.qemu import peer

router = APIRouter(prefix="/vms", tags=["vms"])

MAX_EXEC_ARGS = 256
MAX_STDIN_BYTES = 1 << 20
MAX_LOG_CHUNK = 4 << 20
MAX_WAIT_S = 300.0  # one long poll; clients wanting longer ask again


class VMCreate(VMSpec):
    """A VM spec, and whether to boot it at once."""

    start: bool = False


class ExecRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    argv: list[Annotated[str, Field(max_length=65536)]] = Field(min_length=1, max_length=MAX_EXEC_ARGS)
    timeout: float = Field(default=60.0, gt=0, le=MAX_EXEC_TIMEOUT_S)
    stdin: str | None = Field(default=None, description="base64", max_length=MAX_STDIN_BYTES * 4 // 3 + 4)


VM_LIST = TypeAdapter(list[VMInfo])
CURSOR = r"^[a-z][a-z0-9-]{0,62}:[0-9a-f]{1,32}$"


@router.get("", response_model=list[VMInfo],
            summary="A page of VMs by name; X-Total-Count gives the total, Link the next page")
def list_vms(
    request: Request, pool: PoolDep, _: Caller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    after: Annotated[str | None, Query(pattern=CURSOR, description="NAME:ID of the last VM seen "
                                                                    "(the next link carries it)")] = None,
) -> Response:
    cursor = tuple(after.split(":")) if after else None
    vms, total = pool.vms.page(limit=limit, offset=offset, after=cursor)  # type: ignore[arg-type]
    next_cursor = f"{vms[-1].name}:{vms[-1].id}" if len(vms) == limit else None
    # Serialised here, once: the VMs are valid already, so FastAPI need not check them again.
    return Response(VM_LIST.dump_json(vms), media_type="application/json",
                    headers=page_headers(request, total, limit, offset, next_cursor))


@router.post("", response_model=VMInfo, status_code=status.HTTP_201_CREATED, responses=ACCEPTED,
             summary="Create a VM (201); with start, create and boot it as an operation (202)")
def create_vm(body: VMCreate, pool: PoolDep, caller: Caller) -> VMInfo | JSONResponse:
    spec = VMSpec.model_validate(body.model_dump(exclude={"start"}))
    if body.start:
        return accepted(pool.vm_operations.create(spec, actor=caller.name))
    return pool.vms.create(spec)


@router.get("/{name}", response_model=VMInfo,
            summary="A VM; with wait_for, answers once it is in one of those states (or at timeout)")
def show_vm(
    name: str, pool: PoolDep, _: Caller,
    wait_for: Annotated[list[VMState] | None, Query()] = None,
    timeout: Annotated[float, Query(gt=0, le=MAX_WAIT_S)] = 30.0,
) -> VMInfo:
    if wait_for:
        return pool.vms.wait(name, wait_for, timeout)
    return pool.vms.get(name)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_vm(name: str, pool: PoolDep, _: Caller, force: bool = False) -> Response:
    pool.vms.delete(name, force=force)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/start", status_code=status.HTTP_202_ACCEPTED, response_class=JSONResponse,
             responses=ACCEPTED, summary="Boot a VM; follow the operation")
def start_vm(name: str, pool: PoolDep, caller: Caller) -> JSONResponse:
    return accepted(pool.vm_operations.start(name, actor=caller.name))


@router.post("/{name}/stop", status_code=status.HTTP_202_ACCEPTED, response_class=JSONResponse,
             responses=ACCEPTED, summary="Shut a VM down; follow the operation")
def stop_vm(
    name: str, pool: PoolDep, caller: Caller,
    timeout: Annotated[float, Query(gt=0, le=3600)] = DEFAULT_STOP_TIMEOUT_S,
) -> JSONResponse:
    return accepted(pool.vm_operations.stop(name, actor=caller.name, timeout=timeout))


@router.post("/{name}/restart", status_code=status.HTTP_202_ACCEPTED, response_class=JSONResponse,
             responses=ACCEPTED, summary="Stop and boot a VM again; follow the operation")
def restart_vm(
    name: str, pool: PoolDep, caller: Caller,
    timeout: Annotated[float, Query(gt=0, le=3600)] = DEFAULT_STOP_TIMEOUT_S,
) -> JSONResponse:
    return accepted(pool.vm_operations.restart(name, actor=caller.name, timeout=timeout))


@router.post("/{name}/pause", response_model=VMInfo)
def pause_vm(name: str, pool: PoolDep, _: Caller) -> VMInfo:
    return pool.vms.pause(name)


@router.post("/{name}/resume", response_model=VMInfo)
def resume_vm(name: str, pool: PoolDep, _: Caller) -> VMInfo:
    return pool.vms.resume(name)


@router.post("/{name}/resize", response_model=ResizeResult,
             summary="Change memory (balloon), CPU cap and weight, disk throttling and size; "
             "vCPUs at the next boot")
def resize_vm(name: str, body: Resize, pool: PoolDep, _: Caller) -> ResizeResult:
    return pool.vms.resize(name, body)


@router.get("/{name}/stats", response_model=VMStats)
def vm_stats(name: str, pool: PoolDep, _: Caller) -> VMStats:
    return pool.vms.stats(name)


@router.post("/{name}/exec", response_model=ExecResult,
             summary="Run a command in the guest; returns its exit code, stdout and stderr")
def exec_vm(name: str, body: ExecRequest, pool: PoolDep, _: Caller) -> ExecResult:
    stdin = None
    if body.stdin is not None:
        try:
            stdin = base64.b64decode(body.stdin, validate=True)
        except ValueError as err:  # binascii.Error, or characters that are not base64 at all
            raise InvalidRequest("stdin is not valid base64") from err
    return pool.vms.exec(name, body.argv, timeout=body.timeout, stdin=stdin)


@router.get("/{name}/logs", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}},
            summary="The serial console log from OFFSET; X-Next-Offset says where to go on")
def vm_logs(
    name: str, pool: PoolDep, _: Caller,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LOG_CHUNK)] = 1 << 20,
) -> Response:
    data, next_offset = pool.vms.read_log(name, offset, limit)
    return Response(data, media_type="application/octet-stream",
                    headers={"X-Next-Offset": str(next_offset)})


@router.websocket("/{name}/console")
async def vm_console(websocket: WebSocket, name: str) -> None:
    """Bytes both ways between the websocket and the VM's serial console."""
    pool = websocket.app.state.pool
    try:
        await asyncio.to_thread(pool.tokens.authenticate, bearer(websocket))  # type: ignore[arg-type]
        vm = await asyncio.to_thread(pool.vms.get, name)
    except VirtpoolError as err:
        await websocket.close(code=4000 + err.status, reason=err.message[:120])
        return
    if vm.state.value not in ("running", "paused", "starting"):
        await websocket.close(code=4409, reason=f"VM '{vm.name}' is {vm.state.value}")
        return
    try:
        reader, writer = await asyncio.open_unix_connection(
            sock=await peer.connect(pool.agent.console_socket(vm.id)))
    except (OSError, VirtpoolError) as err:
        await websocket.close(code=4502, reason=f"console unreachable: {err}"[:120])
        return
    await websocket.accept()

    async def to_guest() -> None:
        while True:
            writer.write(await websocket.receive_bytes())
            await writer.drain()

    async def to_user() -> None:
        while data := await reader.read(4096):
            await websocket.send_bytes(data)

    tasks = [asyncio.create_task(to_guest()), asyncio.create_task(to_user())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except WebSocketDisconnect:
        pass
    finally:
        for task in tasks:
            task.cancel()
        writer.close()
        try:
            await websocket.close()
        except RuntimeError:
            pass
