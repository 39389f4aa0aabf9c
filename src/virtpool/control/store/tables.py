"""The pool's tables (SQLAlchemy 2 declarative). Schema changes go through Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


DEFAULT_PROJECT = "default"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always reads back as UTC: SQLite keeps no zone and returns naive
    values, which the API would otherwise publish without one."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class ProjectRow(Base):
    """A tenant: its quotas (None = unlimited) and what its VMs hold against them.

    The ``used_*`` counters change in the same transaction as the VM rows they count, through a
    conditional UPDATE, so that concurrent creates can never overrun a quota.
    """

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    quota_cpus: Mapped[int | None] = mapped_column(Integer, nullable=True)
    quota_memory_mib: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    quota_disk_mib: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    quota_vms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    used_cpus: Mapped[int] = mapped_column(Integer, default=0)
    used_memory_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    used_disk_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    used_vms: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class HostRow(Base):
    """A host of the pool: capacity, reservation, ratios, labels, state, and its claims' sum.

    ``generation`` grows with every change to the row; a claim names the generation it was
    decided on and fails (to be retried on fresh figures) when another claim got there first.
    """

    __tablename__ = "hosts"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    cpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(BigInteger)
    disk_mib: Mapped[int] = mapped_column(BigInteger)
    reserved_cpus: Mapped[int] = mapped_column(Integer, default=0)
    reserved_memory_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_disk_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    cpu_ratio: Mapped[float] = mapped_column(Float, default=4.0)
    memory_ratio: Mapped[float] = mapped_column(Float, default=1.0)
    disk_ratio: Mapped[float] = mapped_column(Float, default=1.0)
    balloon: Mapped[bool] = mapped_column(Boolean, default=False)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="up")
    accel: Mapped[str] = mapped_column(String(8), default="tcg")
    allowed_projects: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    used_cpus: Mapped[int] = mapped_column(Integer, default=0)
    used_memory_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    used_disk_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # Where its agent listens and what version it runs, as the agent last said (None: never).
    address: Mapped[str | None] = mapped_column(String(255), nullable=True)
    agent_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Its VXLAN address when its agent's URL does not give one (the in-process agent of
    # `virtpool up --vtep`); None: the address its agent is reached at, if any.
    vtep: Mapped[str | None] = mapped_column(String(45), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow
    )
    # The serial of the certificate the host's agent enrolled with (None: the in-process
    # agent, or none joined yet), and the last agent event the control plane handled.
    cert_serial: Mapped[str | None] = mapped_column(String(40), nullable=True)
    event_cursor: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class GroupRow(Base):
    """A placement group of one project: its VMs run together (affinity) or apart."""

    __tablename__ = "groups"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_groups_project_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    policy: Mapped[str] = mapped_column(String(16))
    hard: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SettingRow(Base):
    """A pool-wide setting (e.g. the scheduler's default weigher), as a JSON value per key."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(63), primary_key=True)
    value: Mapped[object] = mapped_column(JSON)


class OperationRow(Base):
    """A long action (create and start, stop, image build) that a client can follow."""

    __tablename__ = "operations"
    __table_args__ = (Index("ix_operations_owner_status", "owner", "status"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    target: Mapped[str | None] = mapped_column(String(255), nullable=True)
    project_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    actor: Mapped[str] = mapped_column(String(63))
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # The instance id of the control-plane process running it (control/operations.py).
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow
    )


class VMRow(Base):
    __tablename__ = "vms"
    # Names are unique within a project only, so one tenant cannot learn another's VM names.
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_vms_project_name"),
                      Index("ix_vms_name", "name", "id"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", name="fk_vms_project"), index=True, default=DEFAULT_PROJECT
    )
    group_id: Mapped[str | None] = mapped_column(
        ForeignKey("groups.id", name="fk_vms_group", ondelete="SET NULL"), nullable=True
    )
    required_labels: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    pinned_host: Mapped[str | None] = mapped_column(String(255), nullable=True)  # `--host`
    image: Mapped[str] = mapped_column(String(63))
    cpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_mib: Mapped[int] = mapped_column(Integer)
    kernel_args: Mapped[str] = mapped_column(Text, default="")
    accel: Mapped[str] = mapped_column(String(8), default="auto")
    max_memory_mib: Mapped[int] = mapped_column(Integer)
    cpu_cap_pct: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cpu_weight: Mapped[int] = mapped_column(Integer, default=100)
    disk_iops: Mapped[int | None] = mapped_column(Integer, nullable=True)
    disk_bps: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cpu_affinity: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    # Picks this VM's unprivileged uid on the host (see node/sandbox/users.py); unique so two
    # VMs never share one.
    slot: Mapped[int] = mapped_column(Integer, unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    # The state it had when its host became unreachable (it is `unknown` meanwhile): what the
    # pool wants of it when the host is back.
    known_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Resolved at create (the VM's own, else its image's); None: the server's default.
    boot_timeout_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    stopped_by: Mapped[str | None] = mapped_column(String(16), nullable=True)
    cloud_init: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)
    host: Mapped[str] = mapped_column(String(255), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow
    )
    # When it last began running (kept across pause and resume); NULL while it does not run.
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    ports: Mapped[list[PortRow]] = relationship(
        back_populates="vm", cascade="all, delete-orphan", lazy="selectin", order_by="PortRow.host_port"
    )
    # Its NICs on project networks, first one first (its address is the one `vm list` shows);
    # loaded with the VM in one more query per list, and deleted with it.
    nics: Mapped[list[NicRow]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="NicRow.position"
    )
    # Its security groups by name, in the order they were given (never written through).
    secgroups: Mapped[list[SecGroupRow]] = relationship(
        "SecGroupRow", secondary="vm_secgroups", order_by="VMSecGroupRow.position",
        lazy="selectin", viewonly=True)


class PortRow(Base):
    """A host port forwarded to a VM. The primary key makes a port belong to one VM only."""

    __tablename__ = "port_forwards"

    host_port: Mapped[int] = mapped_column(Integer, primary_key=True)
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"), index=True)
    guest_port: Mapped[int] = mapped_column(Integer)

    vm: Mapped[VMRow] = relationship(back_populates="ports")


class JoinTokenRow(Base):
    """A one-time, expiring token an agent enrols with. Only the SHA-256 of the secret is kept."""

    __tablename__ = "join_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    used_by: Mapped[str | None] = mapped_column(String(255), nullable=True)


class RevokedCertRow(Base):
    """A certificate of the pool CA that is no longer accepted (its host was removed)."""

    __tablename__ = "revoked_certs"

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PoolCARow(Base):
    """The pool CA, shared by every server of the pool: its certificate and its key, sealed
    with the pool's CA passphrase (control/ca_store.py). One row, id 1."""

    __tablename__ = "pool_ca"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    cert_pem: Mapped[str] = mapped_column(Text)
    sealed_key: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TokenRow(Base):
    """An API token. Only the SHA-256 of the secret is kept."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    # None: a pool-wide token (only admins are made so); else the one project it acts in.
    project_id: Mapped[str | None] = mapped_column(
        ForeignKey("projects.id", name="fk_tokens_project", ondelete="CASCADE"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class EventRow(Base):
    """Something the pool did, and why: a VM's state change, a balloon the balancer moved."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(63))
    vm: Mapped[str | None] = mapped_column(String(63), nullable=True)
    project_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class AuditRow(Base):
    """Who changed what, when, and how it ended. Never holds a secret."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    action: Mapped[str] = mapped_column(String(128))
    target: Mapped[str | None] = mapped_column(String(255), nullable=True)
    outcome: Mapped[str] = mapped_column(String(255))


class HostLeaseRow(Base):
    """A host's liveness: renewed by every heartbeat, so it holds nothing else (its usage
    figures are in ``host_usage``), and one renewal is one small UPDATE."""

    __tablename__ = "host_leases"

    host: Mapped[str] = mapped_column(ForeignKey("hosts.name", ondelete="CASCADE"), primary_key=True)
    # Bumped at every acquire: a renewal carrying an older epoch is from an agent since replaced.
    epoch: Mapped[int] = mapped_column(Integer, default=1)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    lapsed: Mapped[bool] = mapped_column(Boolean, default=False)
    # The host's state before it became unreachable, to return to (an operator may change it).
    resume_state: Mapped[str | None] = mapped_column(String(16), nullable=True)


class HostUsageRow(Base):
    """What a host's agent last reported of its use (written with some heartbeats)."""

    __tablename__ = "host_usage"

    host: Mapped[str] = mapped_column(ForeignKey("hosts.name", ondelete="CASCADE"), primary_key=True)
    running_vms: Mapped[int] = mapped_column(Integer)
    memory_used_mib: Mapped[int] = mapped_column(BigInteger)
    cpu_load_pct: Mapped[float] = mapped_column(Float)
    disk_free_mib: Mapped[int] = mapped_column(BigInteger)
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LeaderRow(Base):
    """Who runs the background loops of the pool (one row per role), until ``expires_at``."""

    __tablename__ = "leaders"

    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    epoch: Mapped[int] = mapped_column(Integer, default=1)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class NetworkRow(Base):
    """A virtual network of one project: its subnet, and its VXLAN id (unique in the pool)."""

    __tablename__ = "networks"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_networks_project_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    subnet: Mapped[str] = mapped_column(String(18))
    nat: Mapped[bool] = mapped_column(Boolean, default=False)
    vni: Mapped[int] = mapped_column(Integer, unique=True)
    mtu: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class NicRow(Base):
    """A VM's NIC on a network: the MAC and address IPAM gave it, kept across restarts.

    The network cannot be deleted while a NIC is on it (RESTRICT); a NIC goes with its VM.
    """

    __tablename__ = "nics"
    __table_args__ = (UniqueConstraint("network_id", "address", name="uq_nics_network_address"),
                      UniqueConstraint("vm_id", "position", name="uq_nics_vm_position"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"), index=True)
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id", ondelete="RESTRICT"),
                                            index=True)
    position: Mapped[int] = mapped_column(Integer)
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    address: Mapped[str] = mapped_column(String(15))

    network: Mapped[NetworkRow] = relationship(lazy="selectin")


class SecGroupRow(Base):
    """A security group of one project: allow rules for the NICs of its VMs."""

    __tablename__ = "secgroups"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_secgroups_project_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    rules: Mapped[list[SecGroupRuleRow]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="SecGroupRuleRow.created_at",
        foreign_keys="SecGroupRuleRow.secgroup_id")


class SecGroupRuleRow(Base):
    """One allow rule. Its other side is a CIDR, another group of the project, or neither
    (anywhere). A group named by a rule cannot go (NO ACTION rather than RESTRICT: a project's
    deletion removes both in one statement)."""

    __tablename__ = "secgroup_rules"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secgroup_id: Mapped[str] = mapped_column(ForeignKey("secgroups.id", ondelete="CASCADE"),
                                             index=True)
    direction: Mapped[str] = mapped_column(String(7))
    proto: Mapped[str] = mapped_column(String(4))
    port_min: Mapped[int | None] = mapped_column(Integer, nullable=True)
    port_max: Mapped[int | None] = mapped_column(Integer, nullable=True)
    remote_cidr: Mapped[str | None] = mapped_column(String(18), nullable=True)
    remote_group_id: Mapped[str | None] = mapped_column(
        ForeignKey("secgroups.id"), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    remote_group: Mapped[SecGroupRow | None] = relationship(
        lazy="selectin", foreign_keys=[remote_group_id])


class VMSecGroupRow(Base):
    """A VM in a security group (its every NIC is filtered by the group's rules)."""

    __tablename__ = "vm_secgroups"

    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"), primary_key=True)
    secgroup_id: Mapped[str] = mapped_column(ForeignKey("secgroups.id"),
                                             primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer)



class IdempotencyKeyRow(Base):
    """A create's idempotency key within its project: the request it was first sent with (as a
    SHA-256 of the body) and what that made. ``vm_id`` is None while the first request runs."""

    __tablename__ = "idempotency_keys"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    vm_name: Mapped[str] = mapped_column(String(63))
    start: Mapped[bool] = mapped_column(Boolean)
    vm_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    operation_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class UsageSampleRow(Base):
    """One sample of a VM's usage (control/usage_history.py): the agent's cumulative counters,
    and the point (rates over the interval before it) the dashboard draws. Kept for the
    retention only; no foreign key, so that a sample racing its VM's delete is no error (the
    sweep removes a deleted VM's rows)."""

    __tablename__ = "usage_samples"

    vm_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    t: Mapped[float] = mapped_column(Float, primary_key=True, index=True)
    host: Mapped[str] = mapped_column(String(255))
    counters: Mapped[dict[str, float]] = mapped_column(JSON)
    point: Mapped[dict[str, float]] = mapped_column(JSON)


class HostSampleRow(Base):
    """A host's last sampled disk use, next to its VMs' samples."""

    __tablename__ = "host_samples"

    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    t: Mapped[float] = mapped_column(Float)
    disk_used_mib: Mapped[float | None] = mapped_column(Float, nullable=True)


class ImageRow(Base):
    """An image of the pool: its manifest (ImageInfo as JSON, with each file's SHA-256 and
    size). Every server lists and shows images from here, whichever holds the bytes."""

    __tablename__ = "images"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    manifest: Mapped[dict[str, object]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ImageCopyRow(Base):
    """A server that holds an image's bytes and serves them to its peers at ``url`` (its
    agent listener). No foreign key: the row outlives its image's, so that the server sees the
    image was deleted pool-wide and removes its files."""

    __tablename__ = "image_copies"

    image: Mapped[str] = mapped_column(String(63), primary_key=True)
    server: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str | None] = mapped_column(String(300), nullable=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
