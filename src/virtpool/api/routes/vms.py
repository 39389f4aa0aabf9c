"""VMs: create, list, show, actions, exec, logs, and the serial console over a websocket."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterable, Iterator
from typing import Annotated

from fastapi import (
    APIRouter,
    Header,
    Query,
    Request,
    Response,
    WebSocket,
    WebSocketDisconnect,
    status,
)
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from virtpool import exec_socket
from virtpool.api.access_guard import POLICY_VIOLATION, AccessGuard
from virtpool.api.auth_limit import client_address
from virtpool.api.deps import (
    CONSOLE_PROTOCOL,
    Operator,
    PoolDep,
    Reader,
    Scope,
    offered_protocols,
    resolve_project,
    websocket_bearer,
)
from virtpool.api.long_poll import waiting
from virtpool.api.paging import MAX_ID, page_headers
from virtpool.api.problems import problem
from virtpool.api.routes.operations import ACCEPTED, accepted
from virtpool.control.auth import Principal
from virtpool.control.idempotency import Made
from virtpool.control.pool import Pool
from virtpool.control.vms import DEFAULT_STOP_TIMEOUT_S, MAX_EXEC_TIMEOUT_S
from virtpool.model import exec_lines
from virtpool.model.errors import Conflict, InvalidRequest, VirtpoolError
from virtpool.model.requests import REQUEST
from virtpool.model.roles import Access, check_access
from virtpool.model.secgroup import VMSecGroups
from virtpool.model.spec import ExecOutput, ExecResult, Resize, VMSpec
from virtpool.model.states import VMState
from virtpool.model.vm import ResizeResult, VMInfo, VMStats

router = APIRouter(prefix="/vms", tags=["vms"])

MAX_EXEC_ARGS = 256
MAX_STDIN_BYTES = 1 << 20
MAX_LOG_CHUNK = 4 << 20
MAX_WAIT_S = 300.0  # one long poll; clients wanting longer ask again


class VMCreate(VMSpec):
    """A VM spec, and whether to boot it at once."""

    start: bool = False


class ExecRequest(BaseModel):
    model_config = REQUEST

    argv: list[Annotated[str, Field(max_length=65536)]] = Field(min_length=1, max_length=MAX_EXEC_ARGS)
    timeout: float = Field(default=60.0, gt=0, le=MAX_EXEC_TIMEOUT_S)
    stdin: str | None = Field(default=None, description="base64", max_length=MAX_STDIN_BYTES * 4 // 3 + 4)
    stream: bool = Field(default=False, description="answer NDJSON lines as the command writes")


def _vm_id(pool: Pool, scope: Scope, name: str) -> str:
    """The id of the VM ``name`` (or id) in the request's project; another project's is not found."""
    return pool.vms.get(name, scope.project).id


VM_LIST = TypeAdapter(list[VMInfo])
CURSOR = r"^[a-z][a-z0-9-]{0,62}:[0-9a-f]{1,32}$"


@router.get("", response_model=list[VMInfo],
            summary="A page of VMs by name; X-Total-Count gives the total, Link the next page")
def list_vms(
    request: Request, pool: PoolDep, scope: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    after: Annotated[str | None, Query(pattern=CURSOR, description="NAME:ID of the last VM seen "
                                                                    "(the next link carries it)")] = None,
    all_projects: Annotated[bool, Query(description="pool admins: every project's VMs")] = False,
) -> Response:
    return vm_page(request, pool, scope, limit, offset, after, all_projects)


def vm_page(request: Request, pool: Pool, scope: Scope, limit: int, offset: int, after: str | None,
            all_projects: bool) -> Response:
    """The answer to ``GET /vms`` (also given by api/fast_reads.py): a page as JSON, with its
    total and links in the headers."""
    project = None if all_projects and scope.caller.pool_admin else scope.project
    cursor = tuple(after.split(":")) if after else None
    vms, total = pool.vms.page(limit=limit, offset=offset, project_id=project,
                               after=cursor)  # type: ignore[arg-type]
    next_cursor = f"{vms[-1].name}:{vms[-1].id}" if len(vms) == limit else None
    # Serialised here, once: the VMs are valid already, so FastAPI need not check them again.
    return Response(VM_LIST.dump_json(vms), media_type="application/json",
                    headers=page_headers(request, total, limit, offset, next_cursor))


@router.post("", response_model=VMInfo, status_code=status.HTTP_201_CREATED, responses=ACCEPTED,
             summary="Create a VM (201); with start, create and boot it as an operation (202); "
             "without start on a host that lacks the image, fetch it there as an operation "
             "(202, kind vm.provision). With an Idempotency-Key, a retry answers with what the "
             "first request made")
def create_vm(
    body: VMCreate, request: Request, pool: PoolDep, scope: Operator,
    idempotency_key: Annotated[str | None, Header(
        max_length=255, description="any unique string (a UUID): the same key sent again within "
        "24 h answers with the first request's VM or operation instead of creating another")] = None,
) -> VMInfo | JSONResponse:
    request.state.audit_target = body.name
    spec = VMSpec.model_validate(body.model_dump(exclude={"start"}))

    def create() -> Made:
        if body.start:
            vm, op = pool.vm_operations.create(spec, actor=scope.caller.name, project_id=scope.project)
            return Made(vm, op)
        vm, op = pool.vm_operations.create_stopped(spec, actor=scope.caller.name, project_id=scope.project)
        return Made(vm, op)

    if idempotency_key is None:
        made = create()
    else:
        made = pool.idempotency.run(idempotency_key, scope.project, body.model_dump(mode="json"),
                                    spec.name, body.start, create)
    if made.operation is not None:
        return accepted(made.operation)
    return made.vm


@router.get("/{name}", response_model=VMInfo,
            summary="A VM; with wait_for, answers once it is in one of those states (or at timeout)")
async def show_vm(
    name: str, pool: PoolDep, scope: Reader,
    wait_for: Annotated[list[VMState] | None, Query()] = None,
    timeout: Annotated[float, Query(gt=0, le=MAX_WAIT_S)] = 30.0,
) -> Response:
    if wait_for:
        vm = await run_in_threadpool(_wait, pool, scope, name, wait_for, timeout)
        return Response(vm.model_dump_json(), media_type="application/json")
    return await vm_answer(pool, scope, name)


async def vm_answer(pool: Pool, scope: Scope, name: str) -> Response:
    """The answer to ``GET /vms/{name}`` without ``wait_for`` (also given by api/fast_reads.py)."""
    # No worker thread: SQLite reads at once, PostgreSQL without holding the event loop.
    vm = await pool.vms.read(name, scope.project)
    # Serialised here: returned as a model, FastAPI would validate it again, in a second trip
    # to the thread pool.
    return Response(vm.model_dump_json(), media_type="application/json")


def _wait(pool: Pool, scope: Scope, name: str, states: list[VMState], timeout: float) -> VMInfo:
    with waiting(timeout) as allowed:
        return pool.vms.wait(_vm_id(pool, scope, name), states, allowed)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_vm(name: str, pool: PoolDep, scope: Operator, force: bool = False) -> Response:
    pool.vms.delete(_vm_id(pool, scope, name), force=force)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/start", status_code=status.HTTP_202_ACCEPTED, response_class=JSONResponse,
             responses=ACCEPTED, summary="Boot a VM; follow the operation")
def start_vm(name: str, pool: PoolDep, scope: Operator) -> JSONResponse:
    return accepted(pool.vm_operations.start(_vm_id(pool, scope, name), actor=scope.caller.name))


@router.post("/{name}/stop", status_code=status.HTTP_202_ACCEPTED, response_class=JSONResponse,
             responses=ACCEPTED, summary="Shut a VM down; follow the operation")
def stop_vm(
    name: str, pool: PoolDep, scope: Operator,
    timeout: Annotated[float, Query(gt=0, le=3600)] = DEFAULT_STOP_TIMEOUT_S,
    force: Annotated[bool, Query(description="stop it hard at once (no graceful shutdown)")] = False,
) -> JSONResponse:
    return accepted(pool.vm_operations.stop(_vm_id(pool, scope, name), actor=scope.caller.name,
                                            timeout=timeout, force=force))


@router.post("/{name}/restart", status_code=status.HTTP_202_ACCEPTED, response_class=JSONResponse,
             responses=ACCEPTED, summary="Stop and boot a VM again; follow the operation")
def restart_vm(
    name: str, pool: PoolDep, scope: Operator,
    timeout: Annotated[float, Query(gt=0, le=3600)] = DEFAULT_STOP_TIMEOUT_S,
) -> JSONResponse:
    return accepted(pool.vm_operations.restart(_vm_id(pool, scope, name), actor=scope.caller.name,
                                               timeout=timeout))


@router.post("/{name}/pause", response_model=VMInfo)
def pause_vm(name: str, pool: PoolDep, scope: Operator) -> VMInfo:
    return pool.vms.pause(_vm_id(pool, scope, name))


@router.post("/{name}/resume", response_model=VMInfo)
def resume_vm(name: str, pool: PoolDep, scope: Operator) -> VMInfo:
    return pool.vms.resume(_vm_id(pool, scope, name))


@router.post("/{name}/resize", response_model=ResizeResult,
             summary="Change memory (balloon), CPU cap and weight, disk throttling and size; "
             "vCPUs at the next boot")
def resize_vm(name: str, body: Resize, pool: PoolDep, scope: Operator) -> ResizeResult:
    return pool.vms.resize(_vm_id(pool, scope, name), body)


@router.put("/{name}/secgroups", response_model=VMInfo,
            summary="Set a VM's security groups (the whole list; empty: none), applied live")
def set_vm_secgroups(name: str, body: VMSecGroups, request: Request, pool: PoolDep,
                     scope: Operator) -> VMInfo:
    request.state.audit_target = name
    vm_id = _vm_id(pool, scope, name)
    pool.secgroups.set_vm(scope.project, vm_id, body.secgroups)
    return pool.vms.get(vm_id)


@router.get("/{name}/stats", response_model=VMStats)
def vm_stats(name: str, pool: PoolDep, scope: Reader) -> VMStats:
    return pool.vms.stats(_vm_id(pool, scope, name))


@router.post("/{name}/exec", response_model=ExecResult,
             responses={200: {"content": {"application/x-ndjson": {}},
                              "description": "with stream: one JSON object per line: {\"stdout\": B64} or "
                                             "{\"stderr\": B64} as the command writes, then {\"exit_code\": N} "
                                             "or {\"problem\": {...}}"}},
             summary="Run a command in the guest; its exit code, stdout and stderr (with stream: as they come)")
def exec_vm(name: str, body: ExecRequest, pool: PoolDep, scope: Operator) -> ExecResult | StreamingResponse:
    stdin = None
    if body.stdin is not None:
        try:
            stdin = base64.b64decode(body.stdin, validate=True)
        except ValueError as err:  # binascii.Error, or characters that are not base64 at all
            raise InvalidRequest("stdin is not valid base64") from err
    if not body.stream:
        return pool.vms.exec(_vm_id(pool, scope, name), body.argv, timeout=body.timeout, stdin=stdin)
    items = pool.vms.exec_stream(_vm_id(pool, scope, name), body.argv, timeout=body.timeout, stdin=stdin)
    return StreamingResponse(exec_lines.encode(items), media_type="application/x-ndjson")


@router.get("/{name}/logs", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}},
            summary="The serial console log from OFFSET; X-Next-Offset says where to go on")
def vm_logs(
    name: str, pool: PoolDep, scope: Reader,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LOG_CHUNK)] = 1 << 20,
) -> Response:
    data, next_offset = pool.vms.read_log(_vm_id(pool, scope, name), offset, limit)
    return Response(data, media_type="application/octet-stream",
                    headers={"X-Next-Offset": str(next_offset)})


async def _refuse(websocket: WebSocket, err: VirtpoolError) -> None:
    """Refuse the handshake with the error's own status and problem+json (a plain close before
    the handshake would reach the client as a bare 403, whatever the reason)."""
    await websocket.send_denial_response(problem(err.status, err.title, err.message, err.hint))


@router.websocket("/{name}/exec")
async def vm_exec_socket(websocket: WebSocket, name: str) -> None:
    """A command whose stdin streams to the guest while its output streams back (the exchange:
    virtpool/exec_socket.py). The same rights and checks as POST /exec, audited as it starts."""
    pool = websocket.app.state.pool
    try:
        caller, vm = await _operator_handshake(websocket, pool, name)
        await asyncio.to_thread(pool.audit.record, caller.name, "WS /vms/{name}/exec", vm.name, "101",
                                project_id=vm.project)
    except VirtpoolError as err:
        await _refuse(websocket, err)
        return
    await websocket.accept()

    def start(argv: list[str], timeout: float, stdin: Iterable[bytes]) -> Iterator[ExecOutput | ExecResult]:
        try:
            ExecRequest(argv=argv, timeout=timeout)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise InvalidRequest(f"{field}: {first['msg']}") from None
        return pool.vms.exec_stream(vm.id, argv, timeout=timeout, stdin=stdin)

    await exec_socket.serve(websocket, start, _operator_guard(websocket, pool, caller.token_id, vm.id))


async def _operator_handshake(websocket: WebSocket, pool: Pool, name: str) -> tuple[Principal, VMInfo]:
    """The caller of a console or a streamed exec, and the VM, once it may operate that VM:
    either is a shell on the guest, so it takes the right to change VMs, not just to look."""
    limiter = websocket.app.state.auth_limiter
    caller = await asyncio.to_thread(limiter.authenticate, pool.tokens, websocket_bearer(websocket),
                                     client_address(websocket))
    project = await asyncio.to_thread(resolve_project, pool, caller, websocket.query_params.get("project"))
    check_access(caller.name, caller.role, caller.project_id, Access.OPERATE)
    return caller, await asyncio.to_thread(pool.vms.get, name, project)


def _operator_guard(websocket: WebSocket, pool: Pool, token_id: str, vm_id: str) -> AccessGuard:
    """What ends a console or a streamed exec once its caller may no longer operate the VM."""

    def still_allowed() -> None:
        # The same checks as the handshake's: the token, the project, the role, the VM in it.
        again = pool.tokens.authenticate(websocket_bearer(websocket))
        check_access(again.name, again.role, again.project_id, Access.OPERATE)
        pool.vms.get(vm_id, resolve_project(pool, again, websocket.query_params.get("project")))

    return AccessGuard(pool.tokens, token_id, still_allowed)


@router.websocket("/{name}/console")
async def vm_console(websocket: WebSocket, name: str) -> None:
    """Bytes both ways between the websocket and the VM's serial console."""
    pool = websocket.app.state.pool
    try:
        caller, vm = await _operator_handshake(websocket, pool, name)
    except VirtpoolError as err:
        await _refuse(websocket, err)
        return
    if vm.state.value not in ("running", "paused", "starting"):
        await _refuse(websocket, Conflict(f"VM '{vm.name}' is {vm.state.value}", hint="start it first"))
        return
    try:
        agent = await asyncio.to_thread(pool.agents.for_host, vm.host)
        console = await agent.open_console(vm.id)
    except (OSError, VirtpoolError) as err:
        await websocket.close(code=4502, reason=f"console unreachable: {err}"[:120])
        return
    # A client that offered subprotocols (the dashboard) must get one of them back.
    await websocket.accept(subprotocol=CONSOLE_PROTOCOL if CONSOLE_PROTOCOL in offered_protocols(websocket)
                           else None)

    guard = _operator_guard(websocket, pool, caller.token_id, vm.id)

    # The API relays the agent's byte stream; where the agent runs is the agent's business.
    async def to_guest() -> None:
        while True:
            data = await websocket.receive_bytes()
            if guard.lost:  # typed after the token was revoked: never reaches the guest
                return
            await console.write(data)

    async def to_user() -> None:
        while data := await console.read():
            await websocket.send_bytes(data)

    watcher = asyncio.create_task(guard.watch())
    tasks = [asyncio.create_task(to_guest()), asyncio.create_task(to_user()), watcher]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        # Collected, so that a user who detached (WebSocketDisconnect) or a console that closed
        # is not logged as an error: either is how a console session ends.
        await asyncio.gather(*tasks, return_exceptions=True)
        await console.close()
        code, reason = (POLICY_VIOLATION, guard.reason) if guard.lost else (1000, "")
        try:
            await websocket.close(code=code, reason=reason[:120])
        except (RuntimeError, WebSocketDisconnect, OSError):
            pass  # the user's side is gone already
