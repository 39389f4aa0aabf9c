"""Warm VMs: VMs of the default shape booted ahead of time and kept paused, which a create of
that shape takes instead of booting one.

With the pool setting ``warm_vms`` N, the pool keeps N VMs of the default image and shape
(``VMSpec(name=…)`` and nothing else: 1 vCPU, 256 MiB, a 1 GiB disk, the default network) booted
to their guest agent and paused, in the pool's own project ``_warm``: no tenant can name it
(a project's name begins with a letter or a digit), it has no quota, and pool admins see its VMs
(``vm list --all-projects``). They hold their host's capacity like any VM: they are in its RAM.

``vm create NAME --start`` of exactly that shape (``VMService.create_and_boot``) takes the
oldest ready one. In one transaction its row moves to the caller's project under the caller's name, charged
to that project's quota (a quota with no room refuses the take as it refuses a create, and the
warm VM stays warm); then its vCPUs run again and its guest agent gives the guest its name as
hostname and the clock of now (a paused guest's clock stood still). Anything failing there
deletes it, and the create boots a VM as it would have without the pool.

Identity: each warm VM booted itself as a VM of its own, so everything made from its id is its
own (its MAC on the default network, its instance-id, its uid, cgroup and disk), and so is
what its guest made at boot (the kernel's random pool). Only its name was a placeholder, and
its hostname with it; a reboot from inside its guest before its first stop comes back with that
placeholder hostname (the host's record of that boot), a start after a stop with its own.

The pool refills in the background (``refill``, a round of the leader's loop every few
seconds): one boot at a time, so that refilling never takes more than one core's worth of a
busy host. It pauses the warm VMs that came up, replaces broken ones, and deletes those over
the setting (all of them at 0).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control import quotas
from virtpool.control.events import EventLog
from virtpool.control.settings import SettingsService
from virtpool.control.store.tables import ProjectRow, VMRow, utcnow
from virtpool.control.vms import VMService
from virtpool.model.errors import Conflict, OperationFailed, VirtpoolError
from virtpool.model.guest_identity import identity_argv
from virtpool.model.spec import VMSpec
from virtpool.model.states import VMState
from virtpool.model.vm import VMInfo

log = logging.getLogger(__name__)
S = VMState

WARM_PROJECT = "_warm"
REFILL_PERIOD_S = 2.0
IDENTITY_TIMEOUT_S = 30.0
# What a create may differ in from the warm VMs' spec and still take one: its name, and the
# boot timeout it keeps for its later boots.
FREE_FIELDS = {"name", "boot_timeout_s"}


def warm_shape(spec: VMSpec) -> bool:
    """Whether ``spec`` asks for nothing but what a warm VM is."""
    default = VMSpec(name=spec.name)
    return spec.model_dump(exclude=FREE_FIELDS) == default.model_dump(exclude=FREE_FIELDS)


class _Raced(Exception):
    """Another create took the warm VM between our read and our write."""


class WarmVMs:
    """Take a warm VM for a create; keep the pool of them at the pool setting."""

    def __init__(self, sessions: sessionmaker[Session], vms: VMService, settings: SettingsService,
                 events: EventLog | None = None) -> None:
        self._sessions = sessions
        self._vms = vms
        self._settings = settings
        self._events = events
        self._last_failure: str | None = None  # said once, not every round

    # -- taking ---------------------------------------------------------------------------

    def take(self, spec: VMSpec, project_id: str) -> VMInfo | None:
        """The warm VM now running as ``spec.name`` in ``project_id``, or None when there is
        none to take (the caller boots one). Raises QuotaExceeded as a create would."""
        if project_id == WARM_PROJECT or not warm_shape(spec) or self._settings.get().warm_vms == 0:
            return None
        for _ in range(3):
            try:
                vm_id, was = self._move(spec, project_id)
                break
            except _Raced:
                continue
        else:
            return None
        if vm_id is None:
            return None
        vm = self._vms.get(vm_id)
        try:
            self._vms.resume(vm_id)
            done = self._vms.agent_of(vm).exec_vm(vm_id, identity_argv(spec.name, time.time()),
                                                  timeout=IDENTITY_TIMEOUT_S)
            if done.exit_code != 0:
                raise OperationFailed(f"its guest refused its new name: {done.stderr.strip()}")
        except VirtpoolError as err:
            log.warning("warm VM %s could not become %s (%s); booting one instead", was, spec.name, err)
            try:
                self._vms.delete(vm_id, force=True)
            except VirtpoolError:
                log.exception("could not delete warm VM %s", was)
            return None
        if self._events is not None:
            self._events.record("vm.warm", f"VM '{spec.name}' is the warm VM '{was}', resumed instead "
                                "of booted", vm=spec.name, project_id=project_id,
                                data={"id": vm_id, "warm_name": was})
        return self._vms.get(vm_id)

    def _move(self, spec: VMSpec, project_id: str) -> tuple[str | None, str]:
        """In one transaction: the oldest paused warm VM becomes the caller's, charged to its
        quota. (None, "") when there is none."""
        usage = quotas.vm_usage(spec.cpus, spec.boot_memory_mib, spec.disk_mib)
        try:
            with self._sessions.begin() as session:
                row = session.execute(
                    select(VMRow.id, VMRow.name)
                    .where(VMRow.project_id == WARM_PROJECT, VMRow.state == S.PAUSED.value)
                    .order_by(VMRow.created_at, VMRow.id).limit(1)).first()
                if row is None:
                    return None, ""
                quotas.charge(session, project_id, usage)
                quotas.release(session, WARM_PROJECT, usage)
                now = utcnow()
                moved = session.execute(
                    update(VMRow)
                    .where(VMRow.id == row.id, VMRow.project_id == WARM_PROJECT,
                           VMRow.state == S.PAUSED.value)
                    .values(project_id=project_id, name=spec.name, boot_timeout_s=spec.boot_timeout_s,
                            created_at=now, updated_at=now))
                if moved.rowcount != 1:
                    raise _Raced()
                return row.id, row.name
        except IntegrityError as err:  # a create of the same name won the race
            raise Conflict(f"a VM named '{spec.name}' exists", hint="pick another name") from err

    # -- refilling ------------------------------------------------------------------------

    def refill(self) -> None:
        """One round: pause the warm VMs that came up, remove broken and surplus ones, and
        start booting one more when fewer than the setting are ready or on their way."""
        target = self._settings.get().warm_vms
        with self._sessions() as session:
            rows = session.execute(select(VMRow.id, VMRow.name, VMRow.state, VMRow.created_at)
                                   .where(VMRow.project_id == WARM_PROJECT)
                                   .order_by(VMRow.created_at, VMRow.id)).all()
        if target == 0 and not rows:
            return
        live = []
        for row in rows:
            state = S(row.state)
            if state in (S.ERROR, S.CRASHED, S.STOPPED, S.UNKNOWN):
                self._quietly(f"remove broken warm VM {row.name}", self._vms.delete, row.id, force=True)
            elif state != S.DELETING:
                live.append(row)
        # Kept: the paused ones first, oldest first, so that the one a create takes meanwhile
        # (the oldest paused) is never one this round deletes as surplus.
        live.sort(key=lambda row: row.state != S.PAUSED.value)
        for row in live[target:]:
            self._quietly(f"remove surplus warm VM {row.name}", self._vms.delete, row.id, force=True)
        for row in live[:target]:
            if row.state == S.RUNNING.value:
                self._quietly(f"pause warm VM {row.name}", self._vms.pause, row.id)
        booting = any(row.state in (S.CREATING.value, S.STARTING.value) for row in live)
        if len(live) < target and not booting:
            self._ensure_project()
            spec = VMSpec(name=f"warm-{uuid.uuid4().hex[:12]}")
            self._quietly("boot a warm VM", self._vms.create, spec, start=True, project_id=WARM_PROJECT)

    def _ensure_project(self) -> None:
        """The pool's own project, with no quota, made on first use."""
        with self._sessions.begin() as session:
            if session.get(ProjectRow, WARM_PROJECT) is None:
                session.add(ProjectRow(id=WARM_PROJECT, name=WARM_PROJECT))

    def _quietly(self, what: str, call: Callable[..., object], *args: object, **kwargs: object) -> None:
        """A refill step that failed is tried again next round; its reason is logged once."""
        try:
            call(*args, **kwargs)
            self._last_failure = None
        except VirtpoolError as err:
            message = f"could not {what}: {err}"
            if message != self._last_failure:
                log.warning("%s (retried every %gs)", message, REFILL_PERIOD_S)
            self._last_failure = message
