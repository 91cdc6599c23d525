"""ORM mapping of the control plane's tables. The schema itself is made by migrations/."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class EndpointRow(Base):
    __tablename__ = "endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    base_precision: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(200), default="")
    layers: Mapped[list] = mapped_column(JSON)
    # Denormalised so that the compare-and-swap of a policy write is one row lock away.
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    active_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PolicyVersionRow(Base):
    __tablename__ = "policy_versions"
    __table_args__ = (UniqueConstraint("endpoint_id", "version", name="uq_policy_versions_endpoint_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="RESTRICT"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    parent_version: Mapped[int] = mapped_column(Integer)
    rules: Mapped[list] = mapped_column(JSON)
    kv_cache: Mapped[str] = mapped_column(String(32), default="")
    author: Mapped[str] = mapped_column(String(200), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    artifact: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)


class AuditRow(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(63), index=True)
    action: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(200), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ActivationRow(Base):
    """Each time an endpoint's active version changed, and whether that step was later rolled back."""

    __tablename__ = "activations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="RESTRICT"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    previous_version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))  # activate | rollback | rollout
    actor: Mapped[str] = mapped_column(String(200), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    rolled_back: Mapped[bool] = mapped_column(Boolean, default=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WorkerRow(Base):
    """The last known state of one worker agent of an endpoint (soft state, rewritten often)."""

    __tablename__ = "workers"
    __table_args__ = (UniqueConstraint("endpoint_id", "worker_id", name="uq_workers_endpoint_worker"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="RESTRICT"), index=True)
    worker_id: Mapped[str] = mapped_column(String(200))
    connected: Mapped[bool] = mapped_column(Boolean, default=False)
    replica: Mapped[str] = mapped_column(String(64), default="")
    applied_version: Mapped[int] = mapped_column(Integer, default=0)
    last_ack_version: Mapped[int] = mapped_column(Integer, default=0)
    last_nack_version: Mapped[int] = mapped_column(Integer, default=0)
    last_nack_error: Mapped[str] = mapped_column(Text, default="")
    hardware: Mapped[dict] = mapped_column(JSON, default=dict)
    inference_address: Mapped[str] = mapped_column(String(200), default="")
    last_quality: Mapped[dict] = mapped_column(JSON, default=dict)
    last_serving: Mapped[dict] = mapped_column(JSON, default=dict)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReportRow(Base):
    """Every quality and serving report, kept for rollout analysis and history."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="RESTRICT"))
    worker_id: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # quality | serving
    body: Mapped[dict] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Unique per worker (NULL for workers that send none): a resent report is stored once.
    report_id: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (UniqueConstraint("endpoint_id", "worker_id", "report_id", name="uq_reports_worker_report"),)


class RolloutRow(Base):
    """A progressive rollout; `revision` makes every transition a compare-and-swap across replicas."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="RESTRICT"), index=True)
    from_version: Mapped[int] = mapped_column(Integer)
    to_version: Mapped[int] = mapped_column(Integer)
    steps: Mapped[list] = mapped_column(JSON)
    guardrails: Mapped[dict] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    failed_checks: Mapped[int] = mapped_column(Integer, default=0)
    last_report_id: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    new_workers: Mapped[list] = mapped_column(JSON)
    last_checks: Mapped[list] = mapped_column(JSON)
    actor: Mapped[str] = mapped_column(String(200), default="")
    revision: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    step_started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    report_round: Mapped[int] = mapped_column(Integer, default=0)  # bumped to ask the step's workers to report
    reports_asked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WriteRequestRow(Base):
    """A write RPC by its idempotency key: applied once, answered the same way when retried."""

    __tablename__ = "write_requests"
    # An id belongs to its caller (the token's hash), method and endpoint: nobody else's call can answer it.
    __table_args__ = (UniqueConstraint("caller", "method", "endpoint", "request_id", name="uq_write_requests_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(100))
    method: Mapped[str] = mapped_column(String(100))
    caller: Mapped[str] = mapped_column(String(100), default="")
    endpoint: Mapped[str] = mapped_column(String(63), default="")
    fingerprint: Mapped[str] = mapped_column(String(64), default="")  # SHA-256 of the call's parameters
    response: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TokenRow(Base):
    """A bearer token: only its SHA-256 is stored; the token itself is shown once, at creation."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    endpoint: Mapped[str | None] = mapped_column(String(63), nullable=True)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)  # an agent token of one worker
    bootstrap: Mapped[bool] = mapped_column(Boolean, default=False)  # issues each worker id its own token once


class WorkerLeaseRow(Base):
    """Which live stream holds a worker id, seen by every replica; its replica's heartbeat extends it,
    so the lease of a replica that died expires."""

    __tablename__ = "worker_leases"
    __table_args__ = (UniqueConstraint("endpoint", "worker_id", name="uq_worker_leases_endpoint_worker"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(63))
    worker_id: Mapped[str] = mapped_column(String(128))
    token_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: --auth off
    token_name: Mapped[str] = mapped_column(String(63), default="")
    replica: Mapped[str] = mapped_column(String(64), index=True)
    stream: Mapped[str] = mapped_column(String(32))
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebhookRow(Base):
    """Where an endpoint's notifications go, and which audit actions they are about."""

    __tablename__ = "webhooks"
    __table_args__ = (UniqueConstraint("endpoint_id", "name", name="uq_webhooks_endpoint_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="RESTRICT"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_audit_id: Mapped[int] = mapped_column(Integer, default=0)


class WebhookDeliveryRow(Base):
    """One notification to one webhook: the outbox row a replica claims, sends and settles."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("webhook_id", "audit_id", name="uq_webhook_deliveries_webhook_audit"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="RESTRICT"))
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    audit_id: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    status_code: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    claimed_by: Mapped[str] = mapped_column(String(64), default="")
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
