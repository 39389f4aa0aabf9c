"""The agent contract over HTTPS: a `virtpool agent` on another host (node/service/app.py).

Every call is one request with the control plane's client certificate; the agent's own
certificate is checked against the pool CA, for the host name it enrolled with, and against
the revocation list. A problem+json answer is raised as the error class the agent named, so a
caller cannot tell a remote refusal from a local one; a host that does not answer raises
``AgentUnreachable`` (503) naming the host.
"""

from __future__ import annotations

import base64
import uuid
from urllib.parse import quote
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import websockets
from cryptography import x509
from pydantic import TypeAdapter
from websockets.asyncio.client import ClientConnection

from virtpool import exec_socket
from virtpool.model import errors, exec_lines
from virtpool.model.agent import AgentEvent, AgentUnreachable, ByteStream, Console, Progress, RunStatus
from virtpool.model.certs import serial_of
from virtpool.model.errors import Unauthorized, VirtpoolError
from virtpool.model.backup import BackupInfo
from virtpool.model.image import Firmware, ImageInfo
from virtpool.model.net_change import Change
from virtpool.model.network import HostNetworkInput
from virtpool.model.snapshot import CloneKind, SnapshotInfo
from virtpool.model.spec import ExecOutput, ExecResult, HostInfo, LiveChanges, VMSpec
from virtpool.model.vm import StopMethod, VMUsage
from virtpool.mtls import client_context

_CHANGES = TypeAdapter(list[Change])  # what a network converge changed

CALL_TIMEOUT_S = 30.0
SLACK_S = 30.0  # beyond a call's own timeout (a boot, a stop) for the answer to arrive
BUILD_TIMEOUT_S = 1800.0

# Errors an agent may name, by class name; anything else arrives as OperationFailed.
_ERRORS: dict[str, type[VirtpoolError]] = {
    cls.__name__: cls for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, VirtpoolError)
}
_ERRORS["AgentUnreachable"] = AgentUnreachable


class RemoteAgent:
    """The agent of host ``name`` at ``url`` (https://HOST:PORT)."""

    def __init__(self, name: str, url: str, *, ca: Path, cert: Path, key: Path,
                 revoked: Callable[[], frozenset[str]]) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self._revoked = revoked
        self._tls = client_context(ca, cert, key)
        self._http = httpx.Client(base_url=self.url, verify=self._tls, timeout=CALL_TIMEOUT_S)

    # -- plumbing -------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        try:
            reply = self._http.request(method, path, timeout=timeout or CALL_TIMEOUT_S, **kwargs)
        except httpx.HTTPError as err:
            raise AgentUnreachable(f"host '{self.name}' did not answer ({type(err).__name__}: {err})",
                                   hint="check that its `virtpool agent` runs and is reachable; "
                                        "the VM is reconciled once the host is back") from err
        self._check_peer(reply)
        if reply.status_code >= 400:
            raise self._error(reply)
        return reply

    def _check_peer(self, reply: httpx.Response) -> None:
        stream = reply.extensions.get("network_stream")
        ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
        self._check_certificate(ssl_object.getpeercert(True) if ssl_object is not None else None)

    def _check_certificate(self, der: bytes | None) -> None:
        if der is None:
            return
        if serial_of(x509.load_der_x509_certificate(der)) in self._revoked():
            raise Unauthorized(f"host '{self.name}''s certificate was revoked",
                               hint="the host was removed from the pool; join it again")

    def _error(self, reply: httpx.Response) -> VirtpoolError:
        try:
            problem = reply.json()
        except ValueError:
            problem = {}
        if not isinstance(problem, dict):
            problem = {}
        problem.setdefault("detail", reply.text or reply.reason_phrase)
        return self._problem(problem, reply.status_code)

    @staticmethod
    def _problem(problem: dict[str, Any], status: int) -> VirtpoolError:
        """The error class the agent named in a problem+json, with its words and status."""
        cls = _ERRORS.get(str(problem.get("error")), errors.OperationFailed)
        detail = str(problem.get("detail") or "the agent refused")
        try:
            err = cls(detail, hint=problem.get("hint"))
        except TypeError:  # an error class with its own signature (StateError): keep the words
            err = errors.Conflict(detail, hint=problem.get("hint"))
        err.status = status
        return err

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._call(method, path, **kwargs).json()

    def close(self) -> None:
        self._http.close()

    # -- host -----------------------------------------------------------------------------

    def host_info(self) -> HostInfo:
        return HostInfo.model_validate(self._json("GET", "/v1/host"))

    def check_port_free(self, port: int) -> bool:
        return bool(self._json("GET", f"/v1/ports/{port}"))

    def events(self, after: int, wait: float = 0.0) -> list[AgentEvent]:
        reply = self._json("GET", "/v1/events", params={"after": after, "wait": wait},
                           timeout=wait + SLACK_S)
        return [AgentEvent.model_validate(e) for e in reply]

    # -- images ---------------------------------------------------------------------------

    def list_images(self) -> list[ImageInfo]:
        return [ImageInfo.model_validate(i) for i in self._json("GET", "/v1/images")]

    def get_image(self, name: str) -> ImageInfo:
        return ImageInfo.model_validate(self._json("GET", f"/v1/images/{name}"))

    def build_image(self, name: str, progress: Progress | None = None) -> tuple[ImageInfo, bool]:
        # The agent builds without reporting steps over the wire: one step, then done.
        if progress is not None:
            progress(f"building on host '{self.name}'", 0.0)
        answer = self._json("POST", f"/v1/images/{name}/build", timeout=BUILD_TIMEOUT_S)
        return ImageInfo.model_validate(answer["image"]), bool(answer["built"])

    def import_image(self, name: str, files: Mapping[str, ByteStream], *, kernel_args: str,
                     firmware: Firmware | None = None) -> ImageInfo:
        upload = self._upload(files)
        return ImageInfo.model_validate(self._json(
            "POST", f"/v1/images/{name}",
            json={"upload": upload, "kernel_args": kernel_args, "firmware": firmware}))

    def receive_image(self, info: ImageInfo, files: Mapping[str, ByteStream]) -> ImageInfo:
        upload = self._upload(files)
        return ImageInfo.model_validate(self._json(
            "POST", f"/v1/images/{info.name}/receive",
            json={"upload": upload, "image": info.model_dump(mode="json")}, timeout=BUILD_TIMEOUT_S))

    def _upload(self, files: Mapping[str, ByteStream]) -> str:
        upload = uuid.uuid4().hex
        for field, stream in files.items():
            # The ordinary call timeout, per write and for the answer: a host that takes no
            # bytes for that long is out of reach (a lost link must not stall a create for the
            # length of a build).
            self._call("PUT", f"/v1/uploads/{upload}/{field}", content=iter(stream))
        return upload

    def image_file(self, name: str, file: str) -> Iterator[bytes]:
        try:
            with self._http.stream("GET", f"/v1/images/{name}/files/{file}", timeout=BUILD_TIMEOUT_S) as reply:
                if reply.status_code >= 400:
                    reply.read()
                    raise self._error(reply)
                yield from reply.iter_bytes(1 << 20)
        except httpx.HTTPError as err:
            raise AgentUnreachable(f"host '{self.name}' did not answer: {err}") from err

    def delete_image(self, name: str) -> None:
        self._call("DELETE", f"/v1/images/{name}")

    # -- VM files -------------------------------------------------------------------------

    def vm_ids(self) -> set[str]:
        return set(self._json("GET", "/v1/vms"))

    def create_disk(self, vm_id: str, image: str, disk_mib: int) -> None:
        self._call("POST", f"/v1/vms/{vm_id}/disk", json={"image": image, "disk_mib": disk_mib},
                   timeout=BUILD_TIMEOUT_S)

    def resize_disk_offline(self, vm_id: str, disk_mib: int) -> None:
        self._call("POST", f"/v1/vms/{vm_id}/disk/size", json={"disk_mib": disk_mib})

    def destroy_vm(self, vm_id: str) -> None:
        self._call("DELETE", f"/v1/vms/{vm_id}")

    def read_log(self, vm_id: str, offset: int = 0, limit: int = 1 << 20) -> tuple[bytes, int]:
        reply = self._call("GET", f"/v1/vms/{vm_id}/log", params={"offset": offset, "limit": limit})
        return reply.content, int(reply.headers.get("X-Next-Offset", offset + len(reply.content)))

    # -- VM processes ---------------------------------------------------------------------

    def start_vm(self, vm_id: str, spec: VMSpec, slot: int) -> int:
        body = {"spec": spec.model_dump(mode="json"), "slot": slot}
        return int(self._json("POST", f"/v1/vms/{vm_id}/start", json=body, timeout=CALL_TIMEOUT_S + SLACK_S)["pid"])

    def wait_ready(self, vm_id: str, timeout: float) -> None:
        self._call("POST", f"/v1/vms/{vm_id}/wait-ready", json={"timeout": timeout}, timeout=timeout + SLACK_S)

    def stop_vm(self, vm_id: str, timeout: float) -> StopMethod | None:
        answer = self._json("POST", f"/v1/vms/{vm_id}/stop", json={"timeout": timeout}, timeout=timeout + SLACK_S)
        return answer["method"]  # type: ignore[no-any-return]

    def kill_vm(self, vm_id: str) -> None:
        self._call("POST", f"/v1/vms/{vm_id}/kill", timeout=CALL_TIMEOUT_S + SLACK_S)

    def pause_vm(self, vm_id: str) -> None:
        self._call("POST", f"/v1/vms/{vm_id}/pause")

    def resume_vm(self, vm_id: str) -> None:
        self._call("POST", f"/v1/vms/{vm_id}/resume")

    def exec_vm(self, vm_id: str, argv: list[str], timeout: float, stdin: bytes | None = None) -> ExecResult:
        body = {"argv": argv, "timeout": timeout,
                "stdin": base64.b64encode(stdin).decode() if stdin is not None else None}
        return ExecResult.model_validate(self._json("POST", f"/v1/vms/{vm_id}/exec", json=body,
                                                    timeout=timeout + SLACK_S))

    def exec_stream(self, vm_id: str, argv: list[str], timeout: float,
                    stdin: bytes | ByteStream | None = None) -> Iterator[ExecOutput | ExecResult]:
        """The command's output as the agent reads it from the guest, while it runs; streamed
        input goes over the agent's websocket (virtpool/exec_socket.py), while it runs too."""
        if stdin is not None and not isinstance(stdin, bytes):
            yield from self._exec_socket(vm_id, argv, timeout, stdin)
            return
        body = {"argv": argv, "timeout": timeout,
                "stdin": base64.b64encode(stdin).decode() if stdin is not None else None}
        wait = httpx.Timeout(CALL_TIMEOUT_S, read=timeout + SLACK_S)
        try:
            with self._http.stream("POST", f"/v1/vms/{vm_id}/exec/stream", json=body, timeout=wait) as reply:
                self._check_peer(reply)
                if reply.status_code >= 400:
                    reply.read()
                    raise self._error(reply)
                for line in reply.iter_lines():
                    item = exec_lines.decode(line)
                    if isinstance(item, dict):
                        raise self._problem(item, int(item.get("status") or 500))
                    if item is not None:
                        yield item
                        if isinstance(item, ExecResult):
                            return
        except httpx.HTTPError as err:
            raise AgentUnreachable(f"host '{self.name}' did not answer ({type(err).__name__}: {err})",
                                   hint="check that its `virtpool agent` runs and is reachable") from err
        raise AgentUnreachable(f"host '{self.name}' ended the command's output before its result",
                               hint="the command may still run in the guest; check, then run it again")

    def _exec_socket(self, vm_id: str, argv: list[str], timeout: float,
                     stdin: ByteStream) -> Iterator[ExecOutput | ExecResult]:
        from websockets.sync.client import connect

        url = "wss://" + self.url.removeprefix("https://") + f"/v1/vms/{vm_id}/exec"
        try:
            connection = connect(url, ssl=self._tls, open_timeout=CALL_TIMEOUT_S, max_size=None)
        except (OSError, websockets.WebSocketException, TimeoutError) as err:
            raise AgentUnreachable(f"host '{self.name}' did not answer ({type(err).__name__}: {err})",
                                   hint="check that its `virtpool agent` runs and is reachable") from err
        try:
            self._check_certificate(connection.socket.getpeercert(True))
        except Unauthorized:
            connection.close()
            raise
        for item in exec_socket.call(connection, argv, timeout, stdin):
            if isinstance(item, dict):
                raise self._problem(item, int(item.get("status") or 500))
            yield item
            if isinstance(item, ExecResult):
                return
        raise AgentUnreachable(f"host '{self.name}' ended the command's output before its result",
                               hint="the command may still run in the guest; check, then run it again")

    def apply_live(self, vm_id: str, changes: LiveChanges) -> None:
        self._call("POST", f"/v1/vms/{vm_id}/live", json=changes.model_dump(mode="json", exclude_unset=True))

    def vm_stats(self, vm_id: str) -> VMUsage:
        return VMUsage.model_validate(self._json("GET", f"/v1/vms/{vm_id}/stats"))

    def adopt_vm(self, vm_id: str, name: str) -> RunStatus | None:
        return self._json("POST", f"/v1/vms/{vm_id}/adopt", json={"name": name})["status"]  # type: ignore[no-any-return]

    def converge_networks(self, desired: HostNetworkInput) -> list[Change]:
        reply = self._call("PUT", "/v1/networks", json=desired.model_dump(mode="json"),
                           timeout=CALL_TIMEOUT_S + SLACK_S)
        if reply.status_code == 204:  # an agent of an earlier version says only that it is done
            return []
        return _CHANGES.validate_python(reply.json())

    def clone_disk(self, source_vm_id: str, vm_id: str, *, image: str, snapshot: str | None,
                   kind: CloneKind = "full", keep_ready: int = 0) -> None:
        self._call("POST", f"/v1/vms/{vm_id}/clone", json={"source": source_vm_id, "image": image,
                                                          "snapshot": snapshot, "kind": kind,
                                                          "keep_ready": keep_ready}, timeout=BUILD_TIMEOUT_S)

    def list_snapshots(self, vm_id: str) -> list[SnapshotInfo]:
        return [SnapshotInfo.model_validate(s) for s in self._json("GET", f"/v1/vms/{vm_id}/snapshots")]

    def create_snapshot(self, vm_id: str, name: str, *, memory: bool) -> SnapshotInfo:
        return SnapshotInfo.model_validate(self._json(
            "POST", f"/v1/vms/{vm_id}/snapshots", json={"name": name, "memory": memory},
            timeout=BUILD_TIMEOUT_S))

    def restore_snapshot(self, vm_id: str, name: str) -> None:
        self._call("POST", f"/v1/vms/{vm_id}/snapshots/{quote(name, safe='')}/restore", timeout=BUILD_TIMEOUT_S)

    def delete_snapshot(self, vm_id: str, name: str) -> None:
        self._call("DELETE", f"/v1/vms/{vm_id}/snapshots/{quote(name, safe='')}", timeout=BUILD_TIMEOUT_S)

    def backup_vm(self, vm_id: str, target: str, *, incremental: bool, vm: str, image: str) -> BackupInfo:
        body = {"target": target, "incremental": incremental, "vm": vm, "image": image}
        return BackupInfo.model_validate(self._json("POST", f"/v1/vms/{vm_id}/backups", json=body,
                                                    timeout=BUILD_TIMEOUT_S))

    def read_backup(self, source: str) -> BackupInfo:
        return BackupInfo.model_validate(self._json("GET", "/v1/backups", params={"source": source}))

    def restore_backup(self, vm_id: str, source: str) -> None:
        self._call("POST", f"/v1/vms/{vm_id}/backups/restore", json={"source": source}, timeout=BUILD_TIMEOUT_S)

    async def open_console(self, vm_id: str) -> Console:
        url = "wss://" + self.url.removeprefix("https://") + f"/v1/vms/{vm_id}/console"
        try:
            connection = await websockets.connect(url, ssl=self._tls, max_size=None, open_timeout=CALL_TIMEOUT_S)
        except (OSError, websockets.WebSocketException, TimeoutError) as err:
            raise AgentUnreachable(f"console of host '{self.name}' unreachable: {err}") from err
        return WebSocketConsole(connection)


class WebSocketConsole:
    """A console relayed from a remote agent's websocket."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection

    async def read(self) -> bytes:
        try:
            data = await self._connection.recv()
        except websockets.ConnectionClosed:
            return b""
        return data if isinstance(data, bytes) else data.encode()

    async def write(self, data: bytes) -> None:
        await self._connection.send(data)

    async def close(self) -> None:
        await self._connection.close()
