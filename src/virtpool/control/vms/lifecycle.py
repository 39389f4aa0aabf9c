"""The VM lifecycle, as the control plane runs it, on whichever host each VM is placed.

Rules this module keeps:

* Every state change is a conditional UPDATE (``... WHERE state IN (allowed)``), so two callers
  racing on one VM cannot both win, and a change is written *before* the side effect it
  announces. After a crash, :meth:`VMService.reconcile` finishes or undoes what was under way.
* A host is reached only through the ``Agent`` interface, the agent of the VM's own host
  (``AgentRegistry.for_host``); what hosts report on their own arrives as agent events
  (``on_agent_event``), applied by the pure rules of ``reconcile.py``.
* Long work (booting, stopping) runs in a worker thread; the request that asked for it returns
  at once with the VM in ``starting`` or ``stopping``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from sqlalchemy import case, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, sessionmaker

from virtpool.control import quotas
from virtpool.control.changes import Changes
from virtpool.control.agents.registry import AgentRegistry
from virtpool.control.detached import NoAgentAttached
from virtpool.control.events import EventLog
from virtpool.control.leases import UNREACHABLE
from virtpool.control.networks import NetworkService
from virtpool.control.secgroups import SecGroupService
from virtpool.control.placement import Placed, Placer, claim_delta, host_cpus_for
from virtpool.control.store.read_only import ReadOnly
from virtpool.control.store.tables import DEFAULT_PROJECT, HostRow, PortRow, VMRow, utcnow
from virtpool.control.vms import admission, reads, reconcile
from virtpool.control.vms.fetch import FetchProgress, Report
from virtpool.control.vms.records import held as _held
from virtpool.control.vms.records import info as _info
from virtpool.control.vms.records import spec as _spec
from virtpool.control.vms.records import usage_after as _usage_after
from virtpool.control.vms.reconcile import Do
from virtpool.model.agent import Agent, AgentEvent, ByteStream
from virtpool.model.errors import Conflict, InvalidRequest, NotFound, StateError, VirtpoolError
from virtpool.model.image import ImageInfo, same_files
from virtpool.model.network import HostNetworkInput
from virtpool.model.project import Usage
from virtpool.model.resize import plan_resize
from virtpool.model.resources import Resources
from virtpool.model.spec import ExecOutput, ExecResult, LiveChanges, Resize, VMSpec
from virtpool.model.states import ACTIVE, VMState, check_action, check_transition
from virtpool.model.vm import STOPPED_BY, ResizeResult, StopMethod, VMInfo, VMStats, VMUsage

log = logging.getLogger(__name__)
S = VMState

DEFAULT_BOOT_TIMEOUT_S = 60.0
DEFAULT_STOP_TIMEOUT_S = 30.0
MAX_EXEC_TIMEOUT_S = 3600.0
SLOT_ATTEMPTS = 20
NET_CHANGES_SHOWN = 5  # of a converge's changes, in its event's message (all are in its data)
# The columns of a VM that say how many host CPUs it needs (the scheduler's size filter).
SHAPE = frozenset({"cpus", "cpu_affinity", "cpu_cap_pct"})


class ImageSource(Protocol):
    """The pool's image store, as a VM's create and boot need it (control/images.py)."""

    def get(self, name: str) -> ImageInfo: ...

    def files(self, name: str) -> dict[str, Iterator[bytes]]: ...


class CreateTracker(Protocol):
    """What follows a create-and-boot that runs on after its request answered."""

    def progress(self, percent: int, message: str) -> None:
        """The image's fetch got this far (percent of the whole create, 0..FETCH_SHARE)."""

    def failed(self, message: str) -> None:
        """The create failed: the VM was (or is being) removed, nothing of it is left."""


def _said(err: Exception) -> str:
    return str(err) if isinstance(err, VirtpoolError) else f"internal error: {err!r}"


class VMService:
    """Create, boot, stop and delete VMs, each on its host's agent."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        agents: AgentRegistry,
        *,
        images: ImageSource,
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT_S,
        workers: int = 16,
        events: EventLog | None = None,
        placer: Placer | None = None,
        networks: NetworkService | None = None,
        secgroups: SecGroupService | None = None,
    ) -> None:
        self._sessions = sessions
        # The API's GET and list: autocommit, no pre-ping on PostgreSQL (store/read_only.py).
        self._read_only = ReadOnly(sessions.kw["bind"])
        self._agents = agents
        self._images = images
        self.local_host = agents.local_name
        self._networks = networks or NetworkService(sessions)
        self._secgroups = secgroups or SecGroupService(sessions)
        self._net_lock = threading.Lock()
        # host -> the other hosts it shared a network with at its last converge: when that
        # changes, they are converged too (their VXLAN peers follow).
        self._net_peers: dict[str, set[str]] = {}
        # host -> what it was last converged to: changes to the same input again are a heal.
        self._net_pushed: dict[str, HostNetworkInput] = {}
        self._placer = placer or Placer()
        self.boot_timeout = boot_timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vm-op")
        self._events = events
        # Signalled on every state change, so that waiters wake at once instead of polling.
        self._changes = Changes()
        # Resizes are read-check-write on several columns: one at a time keeps them whole.
        self._resize_lock = threading.Lock()
        # A VM of the default shape already booted and paused, made this create's (or None:
        # boot one); set by the pool when it keeps warm VMs (control/warm_vms.py).
        self.take_warm: Callable[[VMSpec, str], VMInfo | None] | None = None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._read_only.dispose()

    # -- reading ------------------------------------------------------------------------

    def list(self, *, limit: int = 1000, offset: int = 0, project_id: str | None = None,
             after: tuple[str, str] | None = None) -> list[VMInfo]:
        """VMs in (name, id) order, ``offset`` rows in or after the VM ``after`` = (name, id); one
        project's when ``project_id`` is given, else every project's.

        The cursor costs the same on every page (an index range, ix_vms_name); an offset has to
        walk past every row before it.
        """
        return self.page(limit=limit, offset=offset, project_id=project_id, after=after)[0]

    def page(self, *, limit: int, offset: int = 0, project_id: str | None = None,
             after: tuple[str, str] | None = None) -> tuple[list[VMInfo], int]:
        """A page as :meth:`list` reads it, and how many VMs there are in all (one connection)."""
        return self._read_only.run(lambda connection: reads.page(
            connection, limit=limit, offset=offset, project_id=project_id, after=after))

    def get(self, ref: str, project_id: str | None = None) -> VMInfo:
        """A VM by name or id; within ``project_id`` when given (another project's is not found)."""
        vm = self._read_only.run(lambda connection: reads.one(connection, ref, project_id))
        if vm is None:
            raise NotFound(f"no VM named '{ref}'", hint="see `virtpool vm list`")
        return vm

    async def read(self, ref: str, project_id: str | None = None) -> VMInfo:
        """:meth:`get` from the event loop, without holding it on a database round trip
        (store/read_only.py's ``rows``)."""
        vm = reads.one_of(await self._read_only.rows(*reads.one_query(ref, project_id)))
        if vm is None:
            raise NotFound(f"no VM named '{ref}'", hint="see `virtpool vm list`")
        return vm

    def _row(self, session: Session, ref: str, project_id: str | None = None) -> VMRow:
        # One query, ports joined in, rather than a second round trip for them.
        # An id match wins: internal paths pass ids, and another project's VM may be named
        # like one.
        query = (select(VMRow).options(joinedload(VMRow.ports))
                 .where((VMRow.name == ref) | (VMRow.id == ref))
                 .order_by((VMRow.id == ref).desc()))
        if project_id is not None:
            query = query.where(VMRow.project_id == project_id)
        # All rows read (a VM has one row per port), then the first VM.
        row = next(iter(session.scalars(query).unique().all()), None)
        if row is None:
            raise NotFound(f"no VM named '{ref}'", hint="see `virtpool vm list`")
        return row

    # -- state changes --------------------------------------------------------------------

    def _transition(
        self, vm_id: str, allowed: Iterable[VMState], new: VMState, *, error: str | None = None,
        stopped_by: StopMethod | None = None,
    ) -> bool:
        """Move to ``new`` if the VM is in one of ``allowed``; False if it was not. A move to
        STOPPED records ``stopped_by`` (how it ended)."""
        for old in allowed:
            check_transition(vm_id, old, new)  # a caller asking for a move the table forbids is a bug
        with self._sessions.begin() as session:
            result = session.execute(
                update(VMRow)
                .where(VMRow.id == vm_id, VMRow.state.in_([s.value for s in allowed]))
                .values(state=new.value, error=error, updated_at=utcnow(), started_at=_started_at(new),
                        **({"stopped_by": stopped_by} if new == S.STOPPED else {}))
            )
            changed = result.rowcount == 1
        if changed:
            self._changes.notify()
            if self._events is not None:
                name, project_id = self._name_of(vm_id)
                detail = f": {error}" if error else (f" ({STOPPED_BY[stopped_by]})" if stopped_by else "")
                self._events.record("vm.state", f"VM '{name}' is {new.value}{detail}", vm=name,
                                    data={"state": new.value, "id": vm_id, "error": error,
                                          "stopped_by": stopped_by},
                                    project_id=project_id)
        return changed

    def _record_failure(self, vm: VMInfo, message: str) -> None:
        if self._events is not None:
            self._events.record("vm.error", f"VM '{vm.name}': {message}", vm=vm.name,
                                data={"id": vm.id, "host": vm.host}, project_id=vm.project)

    def _slot_of(self, vm_id: str) -> int:
        with self._sessions() as session:
            slot = session.scalar(select(VMRow.slot).where(VMRow.id == vm_id))
        if slot is None:
            raise NotFound(f"VM {vm_id} was deleted while it started")
        return slot

    def _name_of(self, vm_id: str) -> tuple[str, str | None]:
        """The VM's name and project (its id and None once it is gone)."""
        with self._sessions() as session:
            row = session.execute(select(VMRow.name, VMRow.project_id).where(VMRow.id == vm_id)).first()
        return (row[0], row[1]) if row else (vm_id, None)

    def _claim(self, ref: str, action: str, new: VMState) -> VMInfo:
        """Check that ``action`` is allowed now and move to ``new`` in one step."""
        vm = self.get(ref)
        check_action(vm.name, vm.state, action)
        if not self._transition(vm.id, [vm.state], new):
            # Someone else changed it between our read and our write: report the fresh state.
            fresh = self.get(vm.id)
            check_action(fresh.name, fresh.state, action)
            raise Conflict(f"VM '{vm.name}' changed state while {action} was asked; try again")
        return self.get(vm.id)

    def wait(self, ref: str, states: Iterable[VMState], timeout: float) -> VMInfo:
        """Block until the VM is in one of ``states`` (or ``timeout`` passes); return it."""
        wanted = frozenset(states)
        return self._changes.wait_until(lambda: self.get(ref), lambda vm: vm.state in wanted, timeout)

    # -- create ---------------------------------------------------------------------------

    def create(self, spec: VMSpec, *, start: bool = False,
               project_id: str = DEFAULT_PROJECT) -> VMInfo:
        """Validate, place, record (within the project's quota), make the disk; on any failure
        nothing is left behind. With ``start``, boot it too (a refused start removes it), or
        take a warm VM of its shape when the pool keeps some."""
        spec = self._checked(spec, project_id)
        if start and (taken := self._take_warm(spec, project_id)) is not None:
            return taken
        vm_id, host = self._admit(spec, project_id)
        agent = self._agent_or_none(host)
        if agent is not None:
            self._make_disk(agent, vm_id, host, spec.image, spec.disk_mib)
        # On a host without an agent the VM is a record with its claim; its disk is made when
        # it first starts there, once the host's agent has joined.
        self._transition(vm_id, [S.CREATING], S.STOPPED)
        if start:
            try:
                return self.start(vm_id)
            except VirtpoolError:
                # Refused before anything ran (memory, ports, no agent): a create that was
                # asked to start leaves no stopped VM behind.
                self.delete(vm_id, force=True)
                raise
        return self.get(vm_id)

    def create_and_boot(self, spec: VMSpec, *, project_id: str = DEFAULT_PROJECT,
                        track: Callable[[VMInfo], CreateTracker]) -> VMInfo:
        """Admit the VM now (a refusal raises and leaves nothing), then make its disk, with
        the image fetched first when its host lacks it, and boot it, in a worker: the caller
        answers at once. ``track(vm)`` is called once the VM is admitted, before the work
        begins; the tracker it returns hears the fetch's progress, and a failure of the disk
        or of the start (after which nothing of the VM is left, as for a refused create).
        A warm VM of its shape, when the pool keeps some, is taken and returned as it is (its
        tracker hears nothing: its state tells)."""
        spec = self._checked(spec, project_id)
        if (taken := self._take_warm(spec, project_id)) is not None:
            track(taken)
            return taken
        vm_id, host = self._admit(spec, project_id)
        try:
            agent = self._agents.for_host(host)  # it could never start: refused now
        except NoAgentAttached:
            self._remove_row(vm_id)
            raise
        vm = self.get(vm_id)
        tracker = track(vm)
        self._pool.submit(self._make_and_boot, agent, vm, tracker)
        return vm

    def create_in_background(self, spec: VMSpec, *, project_id: str = DEFAULT_PROJECT,
                             track: Callable[[VMInfo], CreateTracker]) -> VMInfo:
        """Create a stopped VM. When its host has the image (or has no agent yet), as
        :meth:`create`: the disk is made before this returns and ``track`` is never called.
        When the host lacks the image, the VM is admitted now (a refusal raises and leaves
        nothing) and the fetch and the disk are made in a worker, as in
        :meth:`create_and_boot` but without the boot: an image of gigabytes on its way never
        holds a request. ``track(vm)`` is then called once, before the work begins."""
        spec = self._checked(spec, project_id)
        vm_id, host = self._admit(spec, project_id)
        agent = self._agent_or_none(host)
        try:
            at_once = agent is None or self._holds_image(agent, spec.image)
        except BaseException:  # e.g. the host went out of reach: a refused create leaves nothing
            self._remove_row(vm_id)
            raise
        if at_once:
            if agent is not None:
                self._make_disk(agent, vm_id, host, spec.image, spec.disk_mib)
            self._transition(vm_id, [S.CREATING], S.STOPPED)
            return self.get(vm_id)
        vm = self.get(vm_id)
        tracker = track(vm)
        self._pool.submit(self._make_and_boot, agent, vm, tracker, boot=False)
        return vm

    def _make_and_boot(self, agent: Agent, vm: VMInfo, tracker: CreateTracker, *, boot: bool = True) -> None:
        try:
            self._make_disk(agent, vm.id, vm.host, vm.image, vm.disk_mib, tracker.progress)
            if boot:
                # Ports are checked again: the fetch may have taken long enough for a program
                # to take one (a stopped VM's are checked when it starts).
                admission.check_ports_recorded(self._sessions, vm.ports, vm_id=vm.id, project_id=vm.project)
                admission.check_ports_free(agent, vm.ports)
        except Exception as err:
            if not isinstance(err, VirtpoolError):
                log.exception("create of VM %s failed", vm.name)
            self._remove_quietly(agent, vm)  # a no-op when the disk's failure removed it
            tracker.failed(_said(err))
            return
        # Straight to booting: a create-and-boot never shows its VM stopped on the way (a
        # client waiting for a settled state would take that for the end).
        if not self._transition(vm.id, [S.CREATING], S.STARTING if boot else S.STOPPED):
            # Deleted (by force, or by a reconcile of its host) while its disk was made: that
            # delete may have come before the disk.
            self._destroy_quietly(agent, vm)
            tracker.failed(f"VM '{vm.name}' was deleted while it was being created")
            return
        if boot:
            self._boot(vm)

    def _checked(self, spec: VMSpec, project_id: str) -> VMSpec:
        """The spec of a create, checked before anything is made (image, name, ports taken),
        with the boot timeout it keeps."""
        image = self._images.get(spec.image)
        self._check_name_free(spec.name, project_id)
        admission.check_ports_recorded(self._sessions, spec.ports, vm_id=None, project_id=project_id)
        # The VM keeps the timeout it was created with: its own, else its image's, else the
        # server's; an image rebuilt or a server restarted later changes nothing.
        return spec.model_copy(update={
            "boot_timeout_s": spec.boot_timeout_s or image.boot_timeout_s or self.boot_timeout})

    def _take_warm(self, spec: VMSpec, project_id: str) -> VMInfo | None:
        return self.take_warm(spec, project_id) if self.take_warm is not None else None

    def _admit(self, spec: VMSpec, project_id: str) -> tuple[str, str]:
        """Record the VM of a ``_checked`` spec (CREATING) with its claim on a host and its
        quota, its ports free there; returns (the VM's id, its host). A refusal leaves nothing."""
        vm_id = uuid.uuid4().hex
        host = self._insert(vm_id, spec, project_id)
        if spec.ports:
            agent = self._agent_or_none(host)
            try:
                if agent is not None:
                    admission.check_ports_free(agent, spec.ports)
            except BaseException:
                self._remove_row(vm_id)
                raise
        if spec.secgroups:
            self.converge_all_networks()  # a new member: rules naming its groups take it in
        return vm_id, host

    def _make_disk(self, agent: Agent, vm_id: str, host: str, image: str, disk_mib: int,
                   progress: Report | None = None) -> None:
        """The VM's disk on its host, the image fetched there first if the host lacks it
        (``progress`` hears how far); on failure the VM's files and record are removed."""
        try:
            self._ensure_image(agent, host, image, progress)
            agent.create_disk(vm_id, image, disk_mib)
        except BaseException:
            try:
                agent.destroy_vm(vm_id)
            except Exception:  # the row goes anyway: the host's reconcile removes orphans
                log.exception("could not remove the files of VM %s on host %s", vm_id, host)
            self._remove_row(vm_id)
            raise

    def _remove_quietly(self, agent: Agent, vm: VMInfo) -> None:
        """Remove the files and the record of a VM whose create failed."""
        self._destroy_quietly(agent, vm)
        self._remove_row(vm.id)

    def _destroy_quietly(self, agent: Agent, vm: VMInfo) -> None:
        try:
            agent.destroy_vm(vm.id)
        except Exception:  # the host's reconcile removes files no record claims
            log.exception("could not remove the files of VM %s on host %s", vm.name, vm.host)

    def _check_name_free(self, name: str, project_id: str) -> None:
        """A taken name is said first, before placement can say that no host fits (the row's
        unique index still decides between two creates racing for one name)."""
        with self._sessions() as session:
            if session.scalar(select(VMRow.id).where(VMRow.name == name, VMRow.project_id == project_id)):
                raise Conflict(f"a VM named '{name}' exists", hint="pick another name")

    def _insert(self, vm_id: str, spec: VMSpec, project_id: str) -> str:
        """Charge the quota, claim a host, write the row; return the host."""
        weigher = self._placer.default_weigher()
        for _ in range(SLOT_ATTEMPTS):
            try:
                with self._sessions.begin() as session:
                    # The quota first: its UPDATE takes the write lock before the slot is picked.
                    # Then the host's claim: both commit with the VM row, or none does (and
                    # every path takes the project's row before a host's, so none deadlocks).
                    quotas.charge(session, project_id, quotas.vm_usage(spec.cpus, spec.boot_memory_mib, spec.disk_mib))
                    placed = self._placer.place_vm(session, spec, project_id, weigher=weigher)
                    session.add(self._new_row(session, vm_id, spec, placed, project_id))
                    if spec.networks:
                        session.flush()  # the NICs' foreign key needs the VM's row
                        self._networks.add_nics(session, project_id, vm_id, spec.networks, spec.ports)
                    if spec.secgroups:
                        self._secgroups.attach(session, project_id, vm_id, spec.secgroups)
                return placed.host
            except IntegrityError as err:
                with self._sessions() as session:
                    if session.scalar(select(VMRow.id).where(VMRow.name == spec.name,
                                                             VMRow.project_id == project_id)):
                        raise Conflict(
                            f"a VM named '{spec.name}' exists", hint="pick another name"
                        ) from err
                admission.check_ports_recorded(self._sessions, spec.ports, vm_id=None,
                                               project_id=project_id)
                # Otherwise a concurrent create took the same slot: pick again.
        raise Conflict("too many VMs are being created at once; try again")

    def _remove_row(self, vm_id: str) -> None:
        """Delete the VM's record and give back what it held against its project's quota and
        on its host."""
        with self._sessions.begin() as session:
            row = session.get(VMRow, vm_id)
            if row is None:
                return
            quotas.release(session, row.project_id, quotas.vm_usage(row.cpus, row.max_memory_mib, row.disk_mib))
            self._placer.release(session, row.host, _held(row))
            session.execute(delete(VMRow).where(VMRow.id == vm_id))

    def _new_row(self, session: Session, vm_id: str, spec: VMSpec, placed: Placed,
                 project_id: str) -> VMRow:
        used = set(session.scalars(select(VMRow.slot)))
        slot = next(n for n in range(len(used) + 1) if n not in used)
        return VMRow(
            id=vm_id, name=spec.name, project_id=project_id, image=spec.image, cpus=spec.cpus,
            memory_mib=spec.memory_mib, disk_mib=spec.disk_mib, kernel_args=spec.kernel_args,
            accel=spec.accel, state=S.CREATING.value, host=placed.host,
            group_id=placed.group_id, required_labels=spec.required_labels or None,
            pinned_host=spec.host,
            max_memory_mib=spec.boot_memory_mib, cpu_cap_pct=spec.cpu_cap_pct,
            cpu_weight=spec.cpu_weight, disk_iops=spec.disk_iops, disk_bps=spec.disk_bps,
            cpu_affinity=spec.cpu_affinity, slot=slot, boot_timeout_s=spec.boot_timeout_s,
            cloud_init=spec.cloud_init.model_dump() if spec.cloud_init else None,
            ports=[PortRow(host_port=p.host, guest_port=p.guest) for p in spec.ports],
        )

    # -- start / stop ---------------------------------------------------------------------

    def start(self, ref: str) -> VMInfo:
        vm = self.get(ref)
        check_action(vm.name, vm.state, "start")
        agent = self._agent_of(vm)
        admission.check_ports_recorded(self._sessions, vm.ports, vm_id=vm.id, project_id=vm.project)
        admission.check_ports_free(agent, vm.ports)
        # Memory is not checked here: the VM's claim on its host (taken at create) holds it.
        vm = self._claim(vm.id, "start", S.STARTING)
        self._pool.submit(self._boot, vm)
        return vm

    def _boot(self, vm: VMInfo, *, spawn: bool = True) -> None:
        """Spawn QEMU (unless it runs already) and wait for the guest agent."""
        agent: Agent | None = None
        try:
            agent = self._agent_of(vm)
            if spawn:
                if vm.id not in agent.vm_ids():
                    # Placed while its host had no agent, or the host lost it: make it now.
                    self._ensure_image(agent, vm.host, vm.image)
                    agent.create_disk(vm.id, vm.image, vm.disk_mib)
                self.converge_networks(vm.host, also={vm.id})
                agent.start_vm(vm.id, _spec(vm), self._slot_of(vm.id))
            agent.wait_ready(vm.id, vm.boot_timeout_s or self.boot_timeout)
        except Exception as err:
            message = str(err) if isinstance(err, VirtpoolError) else f"internal error: {err!r}"
            if not isinstance(err, VirtpoolError):
                log.exception("boot of VM %s failed", vm.name)
            # A boot that failed leaves no process behind, whatever state it reached.
            if self._transition(vm.id, [S.STARTING], S.ERROR, error=message) and agent is not None:
                try:
                    agent.kill_vm(vm.id)
                except VirtpoolError:
                    log.warning("could not kill VM %s after its failed boot; reconcile will", vm.name)
            self._converge_quietly(vm.host)
            return
        self._transition(vm.id, [S.STARTING], S.RUNNING)

    def stop(self, ref: str, *, timeout: float = DEFAULT_STOP_TIMEOUT_S, force: bool = False) -> VMInfo:
        """Shut down gracefully, hard after ``timeout``; with ``force``, hard at once."""
        vm = self._claim(ref, "stop", S.STOPPING)
        self._pool.submit(self._shutdown, vm, timeout, force=force)
        return vm

    def _shutdown(self, vm: VMInfo, timeout: float, then: Callable[[], None] | None = None, *,
                  force: bool = False) -> None:
        how: StopMethod | None
        try:
            agent = self._agent_of(vm)
            try:
                if force:
                    agent.kill_vm(vm.id)
                    how = "forced"
                else:
                    how = agent.stop_vm(vm.id, timeout)
            except Exception:
                log.exception("graceful stop of VM %s failed; stopping it hard", vm.name)
                agent.kill_vm(vm.id)
                how = "killed"
        except VirtpoolError as err:
            # The host is out of reach: the VM may still run there. It stays STOPPING, and
            # the reconcile after the host is back finishes the stop (reconcile.plan).
            log.warning("stop of VM %s failed, its host is out of reach: %s", vm.name, err)
            self._record_failure(vm, f"stop failed: {err}; it is finished when the host is back")
            return
        self._transition(vm.id, [S.STOPPING], S.STOPPED, stopped_by=how)
        self._converge_quietly(vm.host)
        if then is not None:
            then()

    def restart(self, ref: str, *, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> VMInfo:
        vm = self._claim(ref, "restart", S.STOPPING)

        def boot_again() -> None:
            if self._transition(vm.id, [S.STOPPED], S.STARTING):
                self._boot(self.get(vm.id))

        self._pool.submit(self._shutdown, vm, timeout, boot_again)
        return vm

    def pause(self, ref: str) -> VMInfo:
        vm = self._claim(ref, "pause", S.PAUSED)
        try:
            self._agent_of(vm).pause_vm(vm.id)
        except BaseException:
            self._transition(vm.id, [S.PAUSED], S.RUNNING)
            raise
        return self.get(vm.id)

    def resume(self, ref: str) -> VMInfo:
        vm = self._claim(ref, "resume", S.RUNNING)
        try:
            self._agent_of(vm).resume_vm(vm.id)
        except BaseException:
            self._transition(vm.id, [S.RUNNING], S.PAUSED)
            raise
        return self.get(vm.id)

    # -- resources ------------------------------------------------------------------------

    def resize(self, ref: str, request: Resize) -> ResizeResult:
        """Record the new resources, then apply what can change while the VM runs."""
        with self._resize_lock:
            vm = self.get(ref)
            check_action(vm.name, vm.state, "resize")
            running = vm.state in (S.RUNNING, S.PAUSED)
            agent = self._agent_of(vm) if running or request.disk_mib is not None else None
            plan = plan_resize(vm, request, running=running)
            # Beyond the project's quota, the resize is refused and changes nothing.
            grown = _usage_after(vm, plan.columns).minus(_usage_after(vm, {}))
            self._write_columns(vm.id, plan.columns, vm.project, grown)
            try:
                if plan.live is not None and agent is not None:
                    agent.apply_live(vm.id, plan.live)
                elif "disk_mib" in plan.columns and agent is not None:
                    agent.resize_disk_offline(vm.id, plan.columns["disk_mib"])
            except BaseException:
                # Put back what was there, unchecked: what the VM held before always fits
                # again, even if another VM took the room it gave up meanwhile.
                self._write_columns(vm.id, {k: getattr(vm, k) for k in plan.columns}, vm.project,
                                    Usage().minus(grown), check=False)
                raise
        self._changes.notify()
        return ResizeResult(vm=self.get(vm.id), notes=plan.notes)

    def move_balloon(self, vm_id: str, seen_memory_mib: int, to_mib: int) -> bool:
        """Set a running VM's balloon for the memory balancer; False (nothing done) when the
        VM is no longer running or a resize changed its memory since the balancer looked: the
        user's word wins. Under the resize lock, so the two never interleave."""
        with self._resize_lock:
            vm = self.get(vm_id)
            if vm.state != S.RUNNING or vm.memory_mib != seen_memory_mib:
                return False
            self._agent_of(vm).apply_live(vm.id, LiveChanges(balloon_mib=to_mib))
            return True

    def _write_columns(self, vm_id: str, columns: dict[str, object], project_id: str = DEFAULT_PROJECT,
                       quota_delta: Usage | None = None, *, check: bool = True) -> None:
        """Write new resources; charge the quota and move the host claim by the difference."""
        if columns:
            with self._sessions.begin() as session:
                if quota_delta is not None:
                    quotas.charge(session, project_id, quota_delta, check=check)
                row = session.get(VMRow, vm_id)
                if row is None:
                    raise NotFound(f"VM {vm_id} was deleted while it was resized")
                old = _held(row)
                new = Resources(*(int(columns.get(k, getattr(row, k)))  # type: ignore[call-overload]
                                  for k in ("cpus", "max_memory_mib", "disk_mib")))
                # The host CPUs the new shape needs, when the resize changes that shape.
                host_cpus = host_cpus_for(
                    columns.get("cpu_affinity", row.cpu_affinity),  # type: ignore[arg-type]
                    columns.get("cpu_cap_pct", row.cpu_cap_pct),  # type: ignore[arg-type]
                    new.cpus) if SHAPE & columns.keys() else 0
                self._placer.adjust(session, row.host, row.name, claim_delta(old, new),
                                    host_cpus=host_cpus, check=check)
                session.execute(update(VMRow).where(VMRow.id == vm_id).values(**columns, updated_at=utcnow()))

    def stats(self, ref: str, *, tolerant: bool = False) -> VMStats:
        """Usage figures; ``tolerant`` gives a VM that cannot answer empty figures, not an error."""
        vm = self.get(ref)
        try:
            usage = self._agent_of(vm).vm_stats(vm.id) if vm.state in ACTIVE else VMUsage()
        except VirtpoolError:
            if not tolerant:
                raise
            usage = VMUsage()
        return VMStats(name=vm.name, state=vm.state.value, memory_boot_mib=vm.max_memory_mib,
                       **usage.model_dump())

    # -- delete ---------------------------------------------------------------------------

    def delete(self, ref: str, *, force: bool = False) -> None:
        try:
            vm = self._claim(ref, "force-delete" if force else "delete", S.DELETING)
        except StateError as err:
            if force or err.actual == S.DELETING.value:
                raise
            raise StateError(err.vm, err.actual, err.action, err.allowed).with_hint(
                f"stop it first (`virtpool vm stop {err.vm}`), or delete it with --force "
                "(API: force=true), which stops it hard") from err
        agent = self._agent_or_none(vm.host)
        if agent is not None:
            try:
                agent.destroy_vm(vm.id)
            except VirtpoolError as err:
                # The host is out of reach: the record stays DELETING (holding its claim), and
                # the reconcile after the host is back removes the VM there, then the record.
                self._record_failure(vm, f"delete failed: {err}; it is finished when the host is back")
                raise
        self._remove_row(vm.id)
        if vm.secgroups:
            # A member gone: rules naming its groups let it go, and its own host drops its taps.
            self.converge_all_networks()
        elif vm.nics:
            self._converge_quietly(vm.host)

    # -- networks -------------------------------------------------------------------------

    def converge_networks(self, host: str, also: set[str] | frozenset[str] = frozenset()) -> None:
        """Hand ``host``'s agent the networks and taps of its active VMs (and of ``also``,
        about to start): the agent makes its devices and rules exactly that. Then every other
        host sharing a network with it, whose VXLAN peers may have changed; one of them out of
        reach does not fail this: the periodic round (``converge_all_networks``) or its agent's
        return (the reconcile on rejoining) brings it up to date."""
        with self._net_lock:
            active = self._active_vm_ids() | set(also)
            before = self._net_peers.get(host, set())
            self._push_networks(host, self._host_input(host, active))
            sharing = self._networks.hosts_sharing(host, active)
            self._net_peers[host] = sharing
            # Hosts out of reach are left to their return (a request to one could hang).
            for other in sorted(self._reachable(sharing | before)):
                try:
                    self._push_networks(other, self._host_input(other, active))
                except Exception as err:  # noqa: BLE001 - any failure: the next round heals it
                    log.warning("network converge of host %s (a peer of %s) failed for now: %s",
                                other, host, err)

    def converge_all_networks(self) -> None:
        """One round over every host with an agent: what a missed message left behind heals."""
        for host in self._reachable(set(self._agents.attached())):
            try:
                with self._net_lock:
                    self._push_networks(host, self._host_input(host, self._active_vm_ids()))
            except NoAgentAttached:
                continue  # another `virtpool up`'s in-process agent: that server converges it
            except Exception as err:  # noqa: BLE001 - the next round tries again
                log.warning("network converge of host %s failed for now: %s", host, err)

    def _push_networks(self, host: str, desired: HostNetworkInput) -> None:
        """Converge ``host`` to ``desired``; what its agent had to change is logged and made an
        event. The same input as the host's last converge, yet changes: something changed the
        host behind the platform's back (a rule or device deleted by hand), and was healed."""
        changes = self._agents.for_host(host).converge_networks(desired)
        healed = self._net_pushed.get(host) == desired
        self._net_pushed[host] = desired
        if not changes:
            return
        what = "; ".join(str(c) for c in changes[:NET_CHANGES_SHOWN])
        if len(changes) > NET_CHANGES_SHOWN:
            what += f"; and {len(changes) - NET_CHANGES_SHOWN} more"
        if healed:
            kind, message = "network.healed", (f"host '{host}': its networks had drifted from "
                                                f"what was applied; healed: {what}")
            log.warning("%s", message)
        else:
            kind, message = "network.changed", f"host '{host}': networks converged: {what}"
            log.info("%s", message)
        if self._events is not None:
            self._events.record(kind, message, data={
                "host": host, "changes": [dataclasses.asdict(c) for c in changes]})

    def _reachable(self, hosts: set[str]) -> set[str]:
        with self._sessions() as session:
            return set(session.scalars(select(HostRow.name).where(
                HostRow.name.in_(hosts), HostRow.state != UNREACHABLE)))

    def _active_vm_ids(self) -> set[str]:
        with self._sessions() as session:
            return set(session.scalars(select(VMRow.id).where(
                VMRow.state.in_([s.value for s in NET_ACTIVE]))))

    def _host_input(self, host: str, active: set[str]) -> HostNetworkInput:
        """What ``host`` must have for its networks, each NIC with its security groups' rules."""
        return self._secgroups.with_firewalls(self._networks.host_input(host, active))

    def _converge_quietly(self, host: str) -> None:
        # After a VM stopped (its taps go) or security groups changed. A failure here must not
        # undo what was recorded; the next converge (any start, stop or restart of the
        # platform, the host's reconcile) gets there.
        try:
            self.converge_networks(host)
        except Exception:
            log.exception("network converge of host %s failed; its next converge retries", host)

    # -- guest ----------------------------------------------------------------------------

    def exec(
        self, ref: str, argv: list[str], *, timeout: float = 60.0, stdin: bytes | None = None
    ) -> ExecResult:
        vm = self._exec_target(ref, argv, timeout)
        return self._agent_of(vm).exec_vm(vm.id, argv, timeout, stdin)

    def exec_stream(
        self, ref: str, argv: list[str], *, timeout: float = 60.0, stdin: bytes | ByteStream | None = None
    ) -> Iterator[ExecOutput | ExecResult]:
        """As exec, with the output as it comes (the checks happen before the first item), and
        the input whole or as a byte stream read while the command runs."""
        vm = self._exec_target(ref, argv, timeout)
        return self._agent_of(vm).exec_stream(vm.id, argv, timeout, stdin)

    def _exec_target(self, ref: str, argv: list[str], timeout: float) -> VMInfo:
        if not argv or not argv[0]:
            raise InvalidRequest("no command given", hint="e.g. virtpool vm exec NAME -- uname -a")
        if not 0 < timeout <= MAX_EXEC_TIMEOUT_S:
            raise InvalidRequest(f"timeout must be between 0 and {MAX_EXEC_TIMEOUT_S:g} seconds")
        vm = self.get(ref)
        check_action(vm.name, vm.state, "exec")
        return vm

    def read_log(self, ref: str, offset: int = 0, limit: int = 1 << 20) -> tuple[bytes, int]:
        vm = self.get(ref)
        return self._agent_of(vm).read_log(vm.id, offset, limit)

    def local_agent(self) -> Agent:
        """This host's agent (backup directories named on it are read through it)."""
        return self._agents.for_host(self.local_host)

    def agent_on(self, host: str) -> Agent:
        """The agent of ``host``; raises NotFound when the pool has no such host, and
        NoAgentAttached when it has no agent."""
        try:
            return self._agents.for_host(host)
        except NoAgentAttached:
            with self._sessions() as session:
                if session.get(HostRow, host) is None:
                    raise NotFound(f"no host named '{host}'", hint="see `virtpool host list`") from None
            raise

    def agent_of(self, vm: VMInfo) -> Agent:
        """The agent of the VM's host; raises NoAgentAttached when none is."""
        return self._agent_of(vm)

    def _ensure_image(self, agent: Agent, host: str, image: str, progress: Report | None = None) -> None:
        """The host has the image, fetched from the pool's image store if it lacked it
        (streamed; the agent checks every file's SHA-256 against the manifest, and keeps it).
        ``progress`` hears how far the bytes got."""
        if self._holds_image(agent, image):
            return
        log.info("host %s lacks image %s; sending it", host, image)
        files = self._images.files(image, progress)
        info = self._images.get(image)
        if progress is not None:
            files = FetchProgress(info, f"host '{host}'", progress).wrap(files)
        agent.receive_image(info, files)

    def _holds_image(self, agent: Agent, image: str) -> bool:
        """Whether the agent's host has the pool's ``image`` already (no fetch needed). A copy
        of other bytes under that name (the image was deleted and imported again) is dropped
        there, so that the pool's is fetched."""
        try:
            held = agent.get_image(image)
        except NotFound:
            return False
        try:
            pooled = self._images.get(image)
        except NotFound:
            return False  # deleted pool-wide: the host's copy is not used again
        if same_files(held, pooled):
            return True
        log.info("host's copy of image %s differs from the pool's (SHA-256); fetching anew", image)
        agent.delete_image(image)
        return False

    def _agent_of(self, vm: VMInfo) -> Agent:
        """The agent of the VM's host; NoAgentAttached when that host has none."""
        return self._agents.for_host(vm.host)

    def _agent_or_none(self, host: str) -> Agent | None:
        try:
            return self._agents.for_host(host)
        except NoAgentAttached:
            return None

    # -- hosts that go away and come back --------------------------------------------------

    def host_lost(self, host: str) -> None:
        """``host`` is unreachable: its active VMs become UNKNOWN, remembering their state."""
        with self._sessions.begin() as session:
            session.execute(
                update(VMRow).where(VMRow.host == host, VMRow.state.in_([s.value for s in ACTIVE]))
                .values(known_state=VMRow.state)
                .execution_options(synchronize_session=False))
            rows = session.execute(select(VMRow.id, VMRow.state).where(
                VMRow.host == host, VMRow.state.in_([s.value for s in ACTIVE]))).all()
        for vm_id, state in rows:
            self._transition(vm_id, [S(state)], S.UNKNOWN, error=f"host '{host}' is unreachable")

    def restore_known(self, host: str) -> list[VMInfo]:
        """``host`` is back: its UNKNOWN VMs return to the state they had; returns them."""
        with self._sessions() as session:
            rows = session.execute(select(VMRow.id, VMRow.known_state).where(
                VMRow.host == host, VMRow.state == S.UNKNOWN.value)).all()
        back = []
        for vm_id, known in rows:
            if known is not None and self._transition(vm_id, [S.UNKNOWN], S(known)):
                back.append(self.get(vm_id))
        return back

    def host_back(self, host: str) -> None:
        """Converge the VMs of a host that is back: what the pool wants against what runs.

        Every VM of the host, not only those that were UNKNOWN: an operation the lost host cut
        short left its VM in a state of its own (a boot that gave up is ERROR though its QEMU
        may run there, a stop or delete stays STOPPING or DELETING), and a create that gave up
        may have left files that no record claims."""
        if self._agent_or_none(host) is None:
            return
        self.restore_known(host)
        self.reconcile(host)

    # -- what hosts report, and restarts ----------------------------------------------------

    def on_agent_event(self, host: str, event: AgentEvent) -> None:
        """Apply one agent event of ``host`` (at least once: applying it twice is harmless)."""
        if event.kind == "vm.io_error" and self._events is not None:
            name, project_id = self._name_of(event.vm_id)
            paused = event.data.get("action") == "stop"
            self._events.record("vm.io_error", f"VM '{name}' {'was paused by' if paused else 'had'} "
                                f"a disk error on host '{host}': {reconcile.io_error_reason(event.data)}",
                                vm=name, data=event.data, project_id=project_id)
        if event.kind not in ("vm.exited", "vm.io_error", "vm.resumed"):
            return
        with self._sessions() as session:
            row = session.get(VMRow, event.vm_id)
            recorded = S(row.state) if row is not None and row.host == host else None
            name = row.name if row is not None else event.vm_id
            error = row.error if row is not None else None
        if recorded is None:
            return
        runs_now = (event.kind == "vm.exited"
                    and self._agents.for_host(host).adopt_vm(event.vm_id, name) is not None)
        step = reconcile.on_event(recorded, event, runs_now, recorded_error=error)
        if step.do == Do.MARK and step.state is not None:
            if self._transition(event.vm_id, [recorded], step.state, error=step.error,
                                stopped_by=step.stopped_by) and event.kind == "vm.exited":
                self._converge_quietly(host)

    def reconcile(self, host: str | None = None) -> None:
        """Bring the records of ``host`` (default: this one) and the host into agreement, after
        a (re)start of either side. Idempotent."""
        host = host or self.local_host
        agent = self._agents.for_host(host)
        with self._sessions() as session:
            rows = [_info(r) for r in session.scalars(select(VMRow).where(VMRow.host == host))]
        known = {vm.id for vm in rows}
        # The devices of VMs that still run first (an agent restart keeps their traffic
        # flowing); those of VMs found gone are removed by the converges their ends cause.
        self._converge_quietly(host)
        for vm in rows:
            self._reconcile_one(agent, vm)
        for orphan in agent.vm_ids() - known:
            log.warning("removing VM directory %s on host %s that no record claims", orphan, host)
            agent.destroy_vm(orphan)

    def drop_image_copies(self, name: str) -> None:
        """After image ``name`` was deleted pool-wide: the copies that hosts' agents cached go
        too. Best effort: a host out of reach keeps its copy, which is never used again (a
        create checks the pool's manifest, and a copy of other bytes is replaced)."""
        for host in self._agents.attached():
            if host == self.local_host:
                continue
            try:
                self._agents.for_host(host).delete_image(name)
            except NotFound:
                pass
            except VirtpoolError as err:
                log.warning("host %s keeps its copy of deleted image %s (never used again): %s",
                            host, name, err)

    def _reconcile_one(self, agent: Agent, vm: VMInfo) -> None:
        status = None if vm.state in (S.CREATING, S.DELETING) else agent.adopt_vm(vm.id, vm.name)
        step = reconcile.plan(vm.state, status)
        if step.do == Do.REMOVE:
            agent.destroy_vm(vm.id)
            self._remove_row(vm.id)
        elif step.do == Do.MARK and step.state is not None:
            self._transition(vm.id, [vm.state], step.state, error=step.error)
        elif step.do == Do.FINISH_BOOT:
            self._pool.submit(self._boot, vm, spawn=False)
        elif step.do == Do.FINISH_STOP:
            self._pool.submit(self._shutdown, vm, DEFAULT_STOP_TIMEOUT_S)
        elif step.do == Do.KILL:
            log.warning("VM %s is %s but its QEMU runs; stopping it", vm.name, vm.state.value)
            agent.kill_vm(vm.id)


# VMs whose devices stay: an unknown one (its host out of reach) may still run there.
NET_ACTIVE = ACTIVE | {S.UNKNOWN}
# States in which the VM has no uptime; in the others (paused, stopping) it keeps its start time.
NOT_RUNNING = frozenset({S.STOPPED, S.CRASHED, S.ERROR, S.CREATING, S.STARTING})


def _started_at(new: VMState) -> object:
    """``started_at`` for a move to ``new``: now on reaching RUNNING (unless resumed from a pause)."""
    if new == S.RUNNING:
        return case((VMRow.state == S.PAUSED.value, VMRow.started_at), else_=utcnow())
    if new in NOT_RUNNING:
        return None
    return VMRow.started_at
