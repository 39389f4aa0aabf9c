"""The Python SDK: ``virtpool.Client(url, token)``, the same calls the CLI makes."""

from __future__ import annotations

import base64
import errno
import os
import ssl
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from functools import cached_property
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, overload
from urllib.parse import parse_qs, urlsplit

from virtpool.model import exec_lines
from virtpool.model.audit import AuditEntry
from virtpool.model.backup import BackupInfo
from virtpool.model.cloudinit import CloudInit
from virtpool.model.event import Event
from virtpool.model.image import BuildStatus, ImageInfo
from virtpool.model.network import NetworkView, NicRequest
from virtpool.model.inventory import GroupView, HostView, PoolSettings, RebalanceView
from virtpool.model.operation import Operation
from virtpool.model.project import ProjectInfo, QuotaResult
from virtpool.model.secgroup import RuleView, SecGroupView, parse_ports
from virtpool.model.snapshot import SnapshotInfo
from virtpool.model.spec import ExecOutput, ExecResult, HostInfo, PortForward
from virtpool.model.states import VMState
from virtpool.model.token import TokenCreated, TokenInfo
from virtpool.model.vm import ResizeResult, VMInfo, VMStats
from virtpool.sdk.errors import (APIError, InvalidRequest, OperationFailed, Unreachable,
                                 UntrustedServer, error_class)
from virtpool.sdk.errors import raise_for_problem as _raise_for_problem
from virtpool.sdk.tls import Trust, context, explain_refusal, refuse_clear_text
from virtpool.sdk.transport import (CertificateRefused, Headers, Response, StdlibTransport, StreamRefused,
                                    TransportError)

if TYPE_CHECKING:
    import httpx

SETTLED = frozenset({VMState.RUNNING, VMState.STOPPED, VMState.PAUSED, VMState.ERROR, VMState.CRASHED})


# How long a create without start waits for its image to reach the host (and then its disk).
PROVISION_WAIT_S = 1800.0
LONG_POLL_S = 60.0
# A create whose connection failed is sent again (same Idempotency-Key) after each of these.
CREATE_RETRY_PAUSES_S = (0.5, 1.0, 2.0)


# A long poll that comes back unchanged well before its time means the server had no
# long-poll slot free (see api/long_poll.py): wait this long before asking again.
EARLY_ANSWER_PAUSE_S = 0.5


def _open_upload(field: str, path: Path) -> BinaryIO:
    """Open a file to upload as the file itself: a symlink is not followed (one planted in
    place of an image file could point at /etc/shadow), and only a regular file is sent (not a
    block device or a FIFO, which could also block the open)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InvalidRequest(422, "invalid request", f"--{field} {path} is a symlink; virtpool "
                                 "does not follow links when it imports files",
                                 "pass the file itself, after checking what the link points to") from err
        raise InvalidRequest(422, "invalid request", f"cannot open --{field} {path}: {err.strerror}") from err
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        what = "a block device" if stat.S_ISBLK(kind) else "not a regular file"
        raise InvalidRequest(422, "invalid request", f"--{field} {path} is {what}; an image is "
                             "imported from regular files",
                             "copy the device into a file first, e.g. qemu-img convert -O qcow2 "
                             f"{path} disk.qcow2")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _pause_if_early(asked: float, chunk: float) -> None:
    if time.monotonic() - asked < chunk / 4:
        time.sleep(min(EARLY_ANSWER_PAUSE_S, chunk))


class Client:
    """A client of one virtpool API.

    ``project`` is the project every call acts in; leave it out with a project token (it acts
    in its own) or to reach the 'default' project with a pool-wide one. JSON calls go over the
    standard library (see sdk/transport.py: a CLI command cannot afford to import httpx);
    event streams and uploads over httpx. ``transport`` (an httpx transport) sends every call
    through httpx instead, e.g. to an app in-process in tests.

    Over HTTPS the server's certificate is checked against ``ca`` (a CA file, e.g. the pool
    CA), or ``trust`` (sdk/tls.py: a CA or a pinned certificate), else ``VIRTPOOL_CA``, else
    the system's CAs. A plain ``http://`` URL beyond loopback is refused (InsecureURL): the
    token would cross the network in clear text.
    """

    def __init__(self, url: str, token: str, *, project: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None, ca: str | Path | None = None,
                 trust: Trust | None = None) -> None:
        # The URL `virtpool up` prints for the API (…/api/v1) names the same server.
        self.url = url.rstrip("/").removesuffix("/api/v1")
        if transport is None:
            refuse_clear_text(self.url)
        self.token = token
        self.project = project
        self.timeout = timeout
        self.trust = trust if trust is not None else Trust(ca_file=Path(ca)) if ca is not None else Trust.from_env()
        self._transport = transport
        self._plain = None if transport is not None else StdlibTransport(
            self.url + "/api/v1", {"Authorization": f"Bearer {token}"}, timeout, tls=self.tls())

    def tls(self) -> ssl.SSLContext | None:
        """The SSL context this client checks the server with (None for plain HTTP): for a
        websocket or anything else that reaches the same server."""
        return context(self.trust) if self.url.startswith("https://") else None

    @cached_property
    def _http(self) -> httpx.Client:
        """httpx, for streams and uploads (and every call when a transport was given)."""
        import httpx

        # Loading the CA bundle costs ~50 ms; a plain-http URL never opens a TLS connection
        # (every path is relative and redirects are not followed), so only https pays for it.
        return httpx.Client(
            base_url=self.url + "/api/v1", headers={"Authorization": f"Bearer {self.token}"},
            params={"project": self.project} if self.project else None, timeout=self.timeout,
            transport=self._transport, verify=self.tls() or False,
        )

    def close(self) -> None:
        if self._plain is not None:
            self._plain.close()
        if "_http" in self.__dict__:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Response | httpx.Response:
        if self._plain is not None and "files" not in kwargs:
            params = dict(kwargs.pop("params", None) or {})
            if self.project:
                params.setdefault("project", self.project)
            try:
                response: Response | httpx.Response = self._plain.request(method, path, params=params, **kwargs)
            except TransportError as err:
                raise self._unreachable(err) from err
        else:
            import httpx

            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as err:
                raise self._unreachable(err) from err
        _raise_for_problem(response)
        return response

    # -- host and images ------------------------------------------------------------------

    def version(self) -> str:
        """The server's version."""
        return str(self._call("GET", "/version").json()["version"])

    def host(self) -> HostInfo:
        return HostInfo.model_validate(self._call("GET", "/host").json())

    def events(self, *, after: int = 0, kind: str | None = None, vm: str | None = None,
               project: str | None = None, limit: int = 100) -> list[Event]:
        """Events after id ``after``, oldest first (see stream_events to follow them)."""
        params: dict[str, Any] = {"after": after, "limit": limit}
        params.update({k: v for k, v in (("kind", kind), ("vm", vm), ("project", project)) if v is not None})
        return [Event.model_validate(e) for e in self._call("GET", "/events", params=params).json()]

    def audit(self, *, after: int = 0, since: str | None = None, limit: int = 100,
              project: str | None = None) -> list[AuditEntry]:
        """Audit entries, oldest first: a project token's project's; for a pool admin every
        project's unless ``project`` (or the client's project) names one."""
        params: dict[str, Any] = {"after": after, "limit": limit}
        params.update({k: v for k, v in (("since", since), ("project", project)) if v is not None})
        return [AuditEntry.model_validate(e) for e in self._call("GET", "/audit", params=params).json()]

    # -- projects and tokens --------------------------------------------------------------

    def projects(self) -> list[ProjectInfo]:
        """Every project (pool admins), or the caller's own."""
        return [ProjectInfo.model_validate(p) for p in self._call("GET", "/projects").json()]

    def project_info(self, name: str) -> ProjectInfo:
        return ProjectInfo.model_validate(self._call("GET", f"/projects/{name}").json())

    def create_project(self, name: str, **quota: int | None) -> ProjectInfo:
        """Create a project; ``quota`` takes cpus, memory_mib, disk_mib, vms (None: unlimited)."""
        body = {"name": name, "quota": quota}
        return ProjectInfo.model_validate(self._call("POST", "/projects", json=body).json())

    def delete_project(self, name: str) -> None:
        self._call("DELETE", f"/projects/{name}")

    def set_quota(self, name: str, **changes: int | None) -> QuotaResult:
        """Change the quotas given (cpus, memory_mib, disk_mib, vms); None makes one unlimited."""
        return QuotaResult.model_validate(self._call("PUT", f"/projects/{name}/quota", json=changes).json())

    def tokens(self, *, project: str | None = None) -> list[TokenInfo]:
        params = {"project": project} if project else {}
        return [TokenInfo.model_validate(t) for t in self._call("GET", "/tokens", params=params).json()]

    def create_token(self, name: str, role: str, *, project: str | None = None, pool_wide: bool = False,
                     expires_in_s: int | None = None) -> TokenCreated:
        """A new token; ``.token`` holds its secret, which the API never shows again."""
        # A pool-wide token has no project: the client's own is not sent with one (the API
        # refuses both together); one named explicitly still is, so that the API says so.
        body = {"name": name, "role": role, "project": project or (None if pool_wide else self.project),
                "pool_wide": pool_wide, "expires_in_s": expires_in_s}
        return TokenCreated.model_validate(self._call("POST", "/tokens", json=body).json())

    def revoke_token(self, ref: str) -> TokenInfo:
        return TokenInfo.model_validate(self._call("DELETE", f"/tokens/{ref}").json())

    def memory_policy(self) -> dict[str, Any]:
        return self._call("GET", "/host/memory-policy").json()

    def set_memory_policy(self, *, budget_mib: int | None = None,
                          threshold_mib: int | None = None) -> dict[str, Any]:
        body = {k: v for k, v in (("budget_mib", budget_mib), ("threshold_mib", threshold_mib)) if v is not None}
        return self._call("PUT", "/host/memory-policy", json=body).json()

    def images(self) -> list[ImageInfo]:
        return [ImageInfo.model_validate(i) for i in self._call("GET", "/images").json()]

    def image(self, name: str) -> ImageInfo:
        return ImageInfo.model_validate(self._call("GET", f"/images/{name}").json())

    def build_image(self, name: str = "default") -> Operation:
        """Start building an image (or join the build under way); follow it with wait_operation."""
        return Operation.model_validate(self._call("POST", f"/images/{name}/build").json())

    def build_status(self, name: str) -> BuildStatus:
        return BuildStatus.model_validate(self._call("GET", f"/images/{name}/build").json())

    def import_image(self, name: str, *, kernel: Path | None = None, initrd: Path | None = None,
                     disk: Path | None = None, kernel_args: str = "",
                     firmware: str | None = None) -> ImageInfo:
        """Import a kernel (with an optional initramfs and disk), or a disk alone that boots
        through ``firmware`` ("bios", the default, or "uefi")."""
        files = {"kernel": kernel, "initrd": initrd, "disk": disk}
        form = {"name": name, "kernel_args": kernel_args, **({"firmware": firmware} if firmware else {})}
        handles: dict[str, BinaryIO] = {}
        try:
            for field, path in files.items():
                if path is not None:
                    handles[field] = _open_upload(field, path)
            response = self._call(
                "POST", "/images", data=form,
                files={k: (k, h, "application/octet-stream") for k, h in handles.items()},
                timeout=None,
            )
        finally:
            for handle in handles.values():
                handle.close()
        return ImageInfo.model_validate(response.json())

    def delete_image(self, name: str) -> None:
        self._call("DELETE", f"/images/{name}")

    # -- VMs ------------------------------------------------------------------------------

    def vms(self, *, all_projects: bool = False) -> list[VMInfo]:
        """The project's VMs, page by page along the next links; a pool admin's
        ``all_projects`` gives every project's."""
        page = self.vms_page(limit=1000, all_projects=all_projects)
        result = list(page.items)
        while page.next is not None:
            page = self.vms_page(limit=1000, after=page.next, all_projects=all_projects)
            result += page.items
        return result

    def vms_page(self, *, limit: int = 100, offset: int = 0, after: str | None = None,
                 all_projects: bool = False) -> VMPage:
        """One page of VMs by name, the total, and the cursor of the next page (``after``)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset, "all_projects": all_projects}
        if after is not None:
            params["after"] = after
        response = self._call("GET", "/vms", params=params)
        following = response.links.get("next", {}).get("url")
        return VMPage(items=[VMInfo.model_validate(v) for v in response.json()],
                      total=int(response.headers.get("X-Total-Count", 0)),
                      next=parse_qs(urlsplit(following).query).get("after", [None])[0] if following else None)

    def vm(self, name: str) -> VMInfo:
        return VMInfo.model_validate(self._call("GET", f"/vms/{name}").json())

    @overload
    def create_vm(self, name: str, *, image: str = ..., cpus: int = ..., memory_mib: int = ...,
                  disk_mib: int = ..., ports: Iterable[PortForward | str] = ..., kernel_args: str = ...,
                  accel: str = ..., start: Literal[False] = ..., group: str | None = ...,
                  required_labels: dict[str, str] | None = ..., weigher: str | None = ...,
                  networks: Iterable[str] = ..., secgroups: Iterable[str] = ...,
                  idempotency_key: str | None = ..., cloud_init: CloudInit | None = ...,
                  host: str | None = ..., wait_timeout: float = ...,
                  **limits: int | list[int] | None) -> VMInfo: ...

    @overload
    def create_vm(self, name: str, *, image: str = ..., cpus: int = ..., memory_mib: int = ...,
                  disk_mib: int = ..., ports: Iterable[PortForward | str] = ..., kernel_args: str = ...,
                  accel: str = ..., start: Literal[True], group: str | None = ...,
                  required_labels: dict[str, str] | None = ..., weigher: str | None = ...,
                  networks: Iterable[str] = ..., secgroups: Iterable[str] = ...,
                  idempotency_key: str | None = ..., cloud_init: CloudInit | None = ...,
                  host: str | None = ..., wait_timeout: float = ...,
                  **limits: int | list[int] | None) -> Operation: ...

    def create_vm(self, name: str, *, image: str = "default", cpus: int = 1, memory_mib: int = 256,
                  disk_mib: int = 1024, ports: Iterable[PortForward | str] = (),
                  kernel_args: str = "", accel: str = "auto", start: bool = False,
                  group: str | None = None, required_labels: dict[str, str] | None = None,
                  weigher: str | None = None, networks: Iterable[str] = (),
                  secgroups: Iterable[str] = (), idempotency_key: str | None = None,
                  cloud_init: CloudInit | None = None, host: str | None = None,
                  wait_timeout: float = PROVISION_WAIT_S,
                  **limits: int | list[int] | None) -> VMInfo | Operation:
        """Create a VM and return it; with ``start``, create and boot it and return the
        operation to follow. ``limits`` are max_memory_mib, cpu_cap_pct, cpu_weight,
        disk_iops, disk_bps and cpu_affinity (a list of host CPUs). ``group``,
        ``required_labels`` and ``weigher`` say where it may run and how hosts are ranked for it;
        ``host`` pins it to one host (refused with the scheduler's reason when it does not fit).
        ``networks``: a NIC on each, written as for the CLI: "lan" or "lan,ip=10.20.0.5".
        ``secgroups``: security groups of the project filtering those NICs.
        ``cloud_init``: the user part of its NoCloud seed (user-data, SSH keys, hostname,
        network config).

        Without ``start``, on a host that lacks the image, the server answers at once with a
        ``vm.provision`` operation while the image is fetched there; this call follows it and
        returns the VM once its disk is made (raising :class:`OperationFailed` when that fails,
        which leaves nothing of the VM), or as it is (still ``creating``) after ``wait_timeout``.

        The request carries an Idempotency-Key (``idempotency_key``, or a fresh UUID), and is
        sent again with it when the connection fails: the server answers a retry with what the
        first request made, so a create cut off in flight never makes two VMs. Pass your own key
        to retry a create yourself later (within 24 h)."""
        placement = {"group": group, "required_labels": required_labels or {}, "weigher": weigher,
                     **({"host": host} if host is not None else {})}  # older servers lack it
        body = {**limits, **placement,
            "name": name, "image": image, "cpus": cpus, "memory_mib": memory_mib,
            "disk_mib": disk_mib, "kernel_args": kernel_args, "accel": accel, "start": start,
            "ports": [(PortForward.parse(p) if isinstance(p, str) else p).model_dump() for p in ports],
            "networks": [NicRequest.fields(n) for n in networks],
            "secgroups": list(secgroups),
        }
        if cloud_init is not None:
            body["cloud_init"] = cloud_init.model_dump()
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        for pause in (*CREATE_RETRY_PAUSES_S, None):
            try:
                response = self._call("POST", "/vms", json=body, headers=headers)
                break
            except Unreachable:
                if pause is None:
                    raise
                time.sleep(pause)
        if start:
            return Operation.model_validate(response.json())
        if response.status_code == 202:
            self.wait_operation(Operation.model_validate(response.json()), timeout=wait_timeout)
            return self.vm(name)
        return VMInfo.model_validate(response.json())

    def _action(self, name: str, action: str, **params: Any) -> Any:
        return self._call("POST", f"/vms/{name}/{action}", params=params).json()

    def snapshots(self, name: str) -> list[SnapshotInfo]:
        """The VM's snapshots."""
        return [SnapshotInfo.model_validate(s) for s in self._call("GET", f"/vms/{name}/snapshots").json()]

    def create_snapshot(self, name: str, snapshot: str, *, memory: bool = False) -> SnapshotInfo:
        """Snapshot the VM's disk (with ``memory``: its running state too)."""
        body = {"name": snapshot, "memory": memory}
        return SnapshotInfo.model_validate(self._call("POST", f"/vms/{name}/snapshots", json=body,
                                                      timeout=None).json())

    def restore_snapshot(self, name: str, snapshot: str) -> SnapshotInfo:
        """Put the VM back to ``snapshot`` (stopped; running for a memory snapshot)."""
        return SnapshotInfo.model_validate(
            self._call("POST", f"/vms/{name}/snapshots/{snapshot}/restore", timeout=None).json())

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        self._call("DELETE", f"/vms/{name}/snapshots/{snapshot}")

    def clone_vm(self, name: str, new: str, *, snapshot: str | None = None, full: bool = False,
                 memory: bool = False) -> VMInfo:
        """A new stopped VM ``new`` made from ``name``'s disk (or its ``snapshot``): a linked
        clone, a ``full`` copy, or with ``memory`` one whose first start resumes the memory
        snapshot ``snapshot`` (``vm create --from-snapshot``)."""
        body = {"name": new, "snapshot": snapshot, "full": full, "memory": memory}
        return VMInfo.model_validate(self._call("POST", f"/vms/{name}/clone", json=body, timeout=None).json())

    def backup_vm(self, name: str, target: str, *, incremental: bool = False) -> BackupInfo:
        """Back the running VM's disk up into the host directory ``target`` (pool admins)."""
        body = {"target": target, "incremental": incremental}
        return BackupInfo.model_validate(self._call("POST", f"/vms/{name}/backups", json=body,
                                                    timeout=None).json())

    def backup_chain(self, source: str, *, host: str | None = None) -> BackupInfo:
        """The backup chain in the directory ``source`` of ``host`` (default: the server's own)."""
        params = {"source": source, **({"host": host} if host else {})}
        return BackupInfo.model_validate(self._call("GET", "/backups", params=params).json())

    def restore_backup(self, source: str, name: str, *, host: str | None = None) -> VMInfo:
        """A new stopped VM ``name`` whose disk is the newest state of the chain in ``source``
        (a directory of ``host``, where the VM is made; default: the server's own host)."""
        body = {"source": source, "name": name, **({"host": host} if host else {})}
        return VMInfo.model_validate(self._call("POST", "/backups/restore", json=body, timeout=None).json())

    def start_vm(self, name: str) -> Operation:
        """Boot a VM; returns the operation to follow."""
        return Operation.model_validate(self._action(name, "start"))

    def stop_vm(self, name: str, timeout: float = 30.0, *, force: bool = False) -> Operation:
        """Shut a VM down (hard after ``timeout`` seconds, or at once with ``force``); returns
        the operation to follow."""
        return Operation.model_validate(self._action(name, "stop", timeout=timeout, force=force))

    def restart_vm(self, name: str, timeout: float = 30.0) -> Operation:
        return Operation.model_validate(self._action(name, "restart", timeout=timeout))

    def pause_vm(self, name: str) -> VMInfo:
        return VMInfo.model_validate(self._action(name, "pause"))

    def resume_vm(self, name: str) -> VMInfo:
        return VMInfo.model_validate(self._action(name, "resume"))

    def delete_vm(self, name: str, *, force: bool = False) -> None:
        self._call("DELETE", f"/vms/{name}", params={"force": force})

    def resize_vm(self, name: str, **changes: int | list[int] | None) -> ResizeResult:
        """Change resources: memory_mib, max_memory_mib, cpus, cpu_cap_pct, cpu_weight,
        disk_iops, disk_bps, disk_mib, cpu_affinity (0 removes a cap or throttle; [] any CPU)."""
        response = self._call("POST", f"/vms/{name}/resize", json=changes)
        return ResizeResult.model_validate(response.json())

    def vm_stats(self, name: str) -> VMStats:
        return VMStats.model_validate(self._call("GET", f"/vms/{name}/stats").json())

    def host_top(self) -> list[VMStats]:
        return [VMStats.model_validate(v) for v in self._call("GET", "/host/top").json()]

    def exec(self, name: str, argv: list[str], *, timeout: float = 60.0,
             stdin: bytes | None = None) -> ExecResult:
        body: dict[str, Any] = {"argv": argv, "timeout": timeout}
        if stdin is not None:
            body["stdin"] = base64.b64encode(stdin).decode()
        response = self._call("POST", f"/vms/{name}/exec", json=body, timeout=timeout + 30)
        return ExecResult.model_validate(response.json())

    def exec_stream(self, name: str, argv: list[str], *, timeout: float = 60.0,
                    stdin: bytes | Iterable[bytes] | None = None) -> Iterator[ExecOutput | ExecResult]:
        """Run a command in the guest: its output as it is written (``ExecOutput``: stream and
        bytes), then its ``ExecResult`` (exit code; stdout and stderr empty, they came before).
        ``stdin``: the command's input whole, or chunks sent while it runs (as they come: a
        pipe's; their end is its end of file). A command still running at ``timeout`` is
        killed: ``ServerError`` with status 504."""
        if stdin is not None and not isinstance(stdin, bytes):
            yield from self._exec_socket(name, argv, timeout, stdin)
            return
        body: dict[str, Any] = {"argv": argv, "timeout": timeout, "stream": True}
        if stdin is not None:
            body["stdin"] = base64.b64encode(stdin).decode()
        params = f"?project={self.project}" if self.project else ""
        if self._plain is not None:
            try:
                lines: Iterable[bytes] = self._plain.stream_lines("POST", f"/vms/{name}/exec{params}", json=body,
                                                                  timeout=timeout + 30)
                for line in lines:
                    yield from _exec_item(line)
            except StreamRefused as refused:
                _raise_for_problem(refused.response)
            except TransportError as err:
                raise self._unreachable(err) from err
            return
        with self._http.stream("POST", f"/vms/{name}/exec", json=body, timeout=timeout + 30) as response:
            _raise_for_problem(response)
            for text in response.iter_lines():
                yield from _exec_item(text.encode())

    def _exec_socket(self, name: str, argv: list[str], timeout: float,
                     stdin: Iterable[bytes]) -> Iterator[ExecOutput | ExecResult]:
        """exec_stream with streamed input, over the API's websocket (virtpool/exec_socket.py)."""
        from websockets.exceptions import InvalidHandshake, InvalidStatus
        from websockets.sync.client import connect

        from virtpool import exec_socket

        query = f"?project={self.project}" if self.project else ""
        url = self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        tls = self.tls()
        try:
            connection = connect(f"{url}/api/v1/vms/{name}/exec{query}", max_size=None,
                                 additional_headers={"Authorization": f"Bearer {self.token}"},
                                 open_timeout=self.timeout, **({"ssl": tls} if tls is not None else {}))
        except InvalidStatus as refused:  # the server said no, and why, before the command ran
            answer = refused.response
            _raise_for_problem(Response(answer.status_code, answer.reason_phrase,
                                        Headers((k.lower(), v) for k, v in answer.headers.raw_items()),
                                        answer.body or b""))
            raise self._unreachable(refused) from refused
        except (OSError, InvalidHandshake, TimeoutError) as err:
            raise self._unreachable(err) from err
        for item in exec_socket.call(connection, argv, timeout, stdin):
            if isinstance(item, dict):
                raise _exec_problem(item)
            yield item
            if isinstance(item, ExecResult):
                return
        raise _unreachable(self.url, ConnectionError("the server ended the command's output before its "
                                                     "exit code"))

    def logs(self, name: str, offset: int = 0) -> tuple[bytes, int]:
        response = self._call("GET", f"/vms/{name}/logs", params={"offset": offset})
        return response.content, int(response.headers.get("X-Next-Offset", offset))

    def wait_vm(self, name: str, *, until: Iterable[VMState] = SETTLED, timeout: float = 120.0) -> VMInfo:
        """Wait until the VM reaches one of ``until``; returns it (whatever its state at timeout).

        The server holds each request until the state changes (a long poll), so the answer
        comes as soon as the VM gets there, without polling.
        """
        wanted = [s.value for s in until]
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            chunk, asked = min(max(remaining, 0.01), LONG_POLL_S), time.monotonic()
            response = self._call("GET", f"/vms/{name}", params={"wait_for": wanted, "timeout": chunk},
                                  timeout=chunk + 30)
            vm = VMInfo.model_validate(response.json())
            if vm.state.value in wanted or time.monotonic() >= deadline:
                return vm
            _pause_if_early(asked, chunk)

    # -- the pool's hosts, groups and settings ----------------------------------------------

    def hosts(self) -> list[HostView]:
        return [HostView.model_validate(h) for h in self._call("GET", "/hosts").json()]

    def inventory_host(self, name: str) -> HostView:
        return HostView.model_validate(self._call("GET", f"/hosts/{name}").json())

    def add_host(self, name: str, *, cpus: int, memory_mib: int, disk_mib: int,
                 **fields: Any) -> HostView:
        """Add an inventory row; ``fields`` are the other ``HostAdd`` fields (ratios, labels…)."""
        body = {"name": name, "cpus": cpus, "memory_mib": memory_mib, "disk_mib": disk_mib,
                **fields}
        return HostView.model_validate(self._call("POST", "/hosts", json=body).json())

    def remove_host(self, name: str) -> None:
        """Remove a host holding no VM; its agent's certificate is revoked."""
        self._call("DELETE", f"/hosts/{name}")

    def join_token(self, expires_s: float = 3600.0) -> dict[str, Any]:
        """A one-time token for an agent to join with: {token, expires_at, join_url}."""
        return dict(self._call("POST", "/hosts/join-tokens", json={"expires_s": expires_s}).json())

    def set_host_ratios(self, name: str, *, cpu: float | None = None,
                        memory: float | None = None, disk: float | None = None) -> HostView:
        body = {k: v for k, v in (("cpu", cpu), ("memory", memory), ("disk", disk)) if v is not None}
        return HostView.model_validate(self._call("PUT", f"/hosts/{name}/ratios", json=body).json())

    def label_host(self, name: str, set: dict[str, str] | None = None,
                   remove: Iterable[str] = ()) -> HostView:
        body = {"set": set or {}, "remove": list(remove)}
        return HostView.model_validate(self._call("PUT", f"/hosts/{name}/labels", json=body).json())

    def set_host_state(self, name: str, state: str) -> HostView:
        response = self._call("PUT", f"/hosts/{name}/state", json={"state": state})
        return HostView.model_validate(response.json())

    def groups(self) -> list[GroupView]:
        return [GroupView.model_validate(g) for g in self._call("GET", "/groups").json()]

    def group(self, name: str) -> GroupView:
        return GroupView.model_validate(self._call("GET", f"/groups/{name}").json())

    def create_group(self, name: str, policy: str, *, hard: bool = True) -> GroupView:
        body = {"name": name, "policy": policy, "hard": hard}
        return GroupView.model_validate(self._call("POST", "/groups", json=body).json())

    def delete_group(self, name: str) -> None:
        self._call("DELETE", f"/groups/{name}")

    # -- networks -----------------------------------------------------------------------

    def networks(self) -> list[NetworkView]:
        return [NetworkView.model_validate(n) for n in self._call("GET", "/networks").json()]

    def network(self, name: str) -> NetworkView:
        return NetworkView.model_validate(self._call("GET", f"/networks/{name}").json())

    def create_network(self, name: str, *, subnet: str | None = None, nat: bool = False) -> NetworkView:
        body = {"name": name, "subnet": subnet, "nat": nat}
        return NetworkView.model_validate(self._call("POST", "/networks", json=body).json())

    def delete_network(self, name: str) -> None:
        self._call("DELETE", f"/networks/{name}")

    # -- security groups ----------------------------------------------------------------

    def secgroups(self) -> list[SecGroupView]:
        return [SecGroupView.model_validate(g) for g in self._call("GET", "/secgroups").json()]

    def secgroup(self, name: str) -> SecGroupView:
        return SecGroupView.model_validate(self._call("GET", f"/secgroups/{name}").json())

    def create_secgroup(self, name: str) -> SecGroupView:
        return SecGroupView.model_validate(self._call("POST", "/secgroups",
                                                      json={"name": name}).json())

    def delete_secgroup(self, name: str) -> None:
        self._call("DELETE", f"/secgroups/{name}")

    def add_secgroup_rule(self, name: str, direction: str, proto: str, *,
                          ports: str | None = None, remote_cidr: str | None = None,
                          remote_group: str | None = None) -> RuleView:
        """Add an allow rule: ``direction`` ingress or egress, ``proto`` tcp, udp or icmp,
        ``ports`` "22" or "8000-8100", the other side a CIDR or a group (neither: anywhere)."""
        body: dict[str, Any] = {"direction": direction, "proto": proto,
                                "remote_cidr": remote_cidr, "remote_group": remote_group}
        if ports is not None:
            try:
                body["port_min"], body["port_max"] = parse_ports(ports)
            except ValueError as err:
                raise InvalidRequest(422, "invalid request", str(err),
                                     hint="e.g. 22 or 8000-8100") from None
        return RuleView.model_validate(self._call("POST", f"/secgroups/{name}/rules",
                                                  json=body).json())

    def remove_secgroup_rule(self, name: str, rule_id: str) -> None:
        self._call("DELETE", f"/secgroups/{name}/rules/{rule_id}")

    def set_vm_secgroups(self, vm: str, secgroups: Iterable[str]) -> VMInfo:
        """Put ``vm`` in exactly these groups (none: the network's default), applied live."""
        return VMInfo.model_validate(self._call("PUT", f"/vms/{vm}/secgroups",
                                                json={"secgroups": list(secgroups)}).json())

    def pool_settings(self) -> PoolSettings:
        return PoolSettings.model_validate(self._call("GET", "/pool/settings").json())

    def set_pool_settings(self, **changes: Any) -> PoolSettings:
        body = {**self.pool_settings().model_dump(), **changes}
        return PoolSettings.model_validate(self._call("PUT", "/pool/settings", json=body).json())

    def rebalance(self, *, threshold_pp: float = 10.0, consolidate: bool = False,
                  dry_run: bool = True) -> RebalanceView:
        """The plan (``dry_run``), or plan and apply it (needs live migration)."""
        if dry_run:
            response = self._call("GET", "/pool/rebalance",
                                  params={"threshold_pp": threshold_pp, "consolidate": consolidate})
        else:
            response = self._call("POST", "/pool/rebalance",
                                  json={"threshold_pp": threshold_pp, "consolidate": consolidate})
        return RebalanceView.model_validate(response.json())

    # -- operations and the event stream --------------------------------------------------

    def operations(self, *, project: str | None = None, status: str | None = None,
                   kind: str | None = None, target: str | None = None, limit: int = 50) -> list[Operation]:
        """Recent operations, newest first."""
        params = {k: v for k, v in (("project", project), ("status", status), ("kind", kind),
                                    ("target", target)) if v is not None}
        response = self._call("GET", "/operations", params={**params, "limit": limit})
        return [Operation.model_validate(o) for o in response.json()]

    def operation(self, op_id: str, *, wait: float = 0) -> Operation:
        """An operation; with ``wait``, the server answers once it finished or moved on."""
        response = self._call("GET", f"/operations/{op_id}", params={"wait": wait} if wait else None,
                              timeout=wait + 30)
        return Operation.model_validate(response.json())

    def wait_operation(self, op: Operation | str, *, timeout: float = 300.0, check: bool = True,
                       on_progress: Callable[[Operation], None] | None = None) -> Operation:
        """Follow an operation to its end (long polls, no busy loop) and return it.

        ``on_progress`` hears every change. With ``check``, a failed operation raises
        :class:`OperationFailed`. Returns the unfinished operation if ``timeout`` passes first.
        """
        current = op if isinstance(op, Operation) else self.operation(op)
        deadline = time.monotonic() + timeout
        while not current.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return current
            chunk, asked = min(remaining, LONG_POLL_S), time.monotonic()
            before = (current.status, current.progress, current.message)
            current = self.operation(current.id, wait=chunk)
            if on_progress is not None:
                on_progress(current)
            if (current.status, current.progress, current.message) == before:
                _pause_if_early(asked, chunk)
        if check and current.status == "failed":
            raise OperationFailed(current)
        return current

    def stream_events(self, *, after: int = 0, project: str | None = None, vm: str | None = None,
                      kind: str | None = None) -> Iterator[Event]:
        """Events after id ``after``, then each new one as it happens (server-sent events).

        Runs until the caller stops iterating; the server sends heartbeats, so a silent pool
        does not time the connection out. A stream the server ends raises: Unauthorized when
        it said the token was revoked or expired, Unreachable when it went away.
        """
        import httpx
        from httpx_sse import connect_sse

        params = {k: v for k, v in (("project", project), ("vm", vm), ("kind", kind)) if v is not None}
        try:
            with connect_sse(self._http, "GET", "/events/stream", params={**params, "after": after},
                             timeout=httpx.Timeout(self._http.timeout.connect, read=None)) as source:
                _raise_for_problem(source.response)
                for message in source.iter_sse():
                    if message.event == "problem":
                        body = message.json()
                        raise error_class(body.get("status", 0), body)(
                            body.get("status", 0), body.get("title", "error"), body.get("detail", ""),
                            body.get("hint"), body)
                    if message.data:
                        yield Event.model_validate_json(message.data)
        except httpx.TransportError as err:
            raise self._unreachable(err) from err
        raise _unreachable(self.url, ConnectionError("the server closed the event stream"))

    def _unreachable(self, err: Exception) -> APIError:
        """The error for a call that got no answer; a refused certificate says which and why."""
        refused = err.ssl_error if isinstance(err, CertificateRefused) else _ssl_cause(err)
        if refused is not None:
            message, hint = explain_refusal(self.url, self.trust, refused)
            return UntrustedServer(0, "untrusted server", message, hint)
        return _unreachable(self.url, err)


@dataclass(frozen=True)
class VMPage:
    items: list[VMInfo]
    total: int
    next: str | None  # the cursor of the next page, if there may be one


def _exec_item(line: bytes) -> Iterator[ExecOutput | ExecResult]:
    """The item one NDJSON line of a streamed exec carries (a problem line raises)."""
    item = exec_lines.decode(line)
    if isinstance(item, dict):
        raise _exec_problem(item)
    if item is not None:
        yield item


def _exec_problem(item: dict[str, Any]) -> APIError:
    """The error for a streamed exec's problem line (a refusal after the answer began)."""
    status = int(item.get("status") or 500)
    return error_class(status, item)(status, item.get("title", "error"), item.get("detail", ""),
                                     item.get("hint"), item)


def _ssl_cause(err: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate refusal behind an httpx error, if that is what it was."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _unreachable(url: str, err: Exception) -> APIError:
    return error_class(0, {})(0, "unreachable", f"cannot reach virtpool at {url}: {err}",
                              "is `virtpool up` running? check VIRTPOOL_URL")
