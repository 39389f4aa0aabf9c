"""The pool's tables (SQLAlchemy 2 declarative). Schema changes go through Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class VMRow(Base):
    __tablename__ = "vms"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
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
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    host: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    ports: Mapped[list[PortRow]] = relationship(
        back_populates="vm", cascade="all, delete-orphan", lazy="selectin", order_by="PortRow.host_port"
    )


class PortRow(Base):
    """A host port forwarded to a VM. The primary key makes a port belong to one VM only."""

    __tablename__ = "port_forwards"

    host_port: Mapped[int] = mapped_column(Integer, primary_key=True)
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"), index=True)
    guest_port: Mapped[int] = mapped_column(Integer)

    vm: Mapped[VMRow] = relationship(back_populates="ports")


class TokenRow(Base):
    """An API token. Only the SHA-256 of the secret is kept."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class EventRow(Base):
    """Something the pool did, and why: a VM's state change, a balloon the balancer moved."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(63))
    vm: Mapped[str | None] = mapped_column(String(63), nullable=True)
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class AuditRow(Base):
    """Who changed what, when, and how it ended. Never holds a secret."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(63))
    action: Mapped[str] = mapped_column(String(128))
    target: Mapped[str | None] = mapped_column(String(255), nullable=True)
    outcome: Mapped[str] = mapped_column(String(255))
