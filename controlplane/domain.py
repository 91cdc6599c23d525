"""What the control plane stores, as plain immutable values (no SQL, no proto)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mixprec.policy import PolicySpec


@dataclass(frozen=True)
class Endpoint:
    name: str
    base_precision: str
    model: str
    layers: tuple[str, ...]
    created_at: datetime
    latest_version: int = 0
    active_version: int = 0


@dataclass(frozen=True)
class PolicyVersion:
    endpoint: str
    version: int
    parent_version: int
    spec: PolicySpec
    author: str
    message: str
    created_at: datetime


@dataclass(frozen=True)
class AuditEntry:
    endpoint: str
    action: str
    actor: str
    reason: str
    detail: dict
    at: datetime


@dataclass(frozen=True)
class Activation:
    endpoint: str
    version: int
    previous_version: int
    kind: str
    actor: str
    reason: str
    rolled_back: bool
    at: datetime


@dataclass(frozen=True)
class WorkerState:
    endpoint: str
    worker_id: str
    connected: bool
    applied_version: int
    last_ack_version: int
    last_nack_version: int
    last_nack_error: str
    hardware: dict
    inference_address: str
    last_quality: dict
    last_serving: dict
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class WorkerUpdate:
    """What one stream learnt about its worker since the last flush (None: unchanged)."""

    endpoint: str
    worker_id: str
    connected: bool | None = None
    applied_version: int | None = None
    last_ack_version: int | None = None
    last_nack_version: int | None = None
    last_nack_error: str | None = None
    last_quality: dict | None = None
    last_serving: dict | None = None
    seen_at: datetime | None = None

    def merged(self, newer: WorkerUpdate) -> WorkerUpdate:
        fields = {k: v for k, v in vars(newer).items() if v is not None}
        return WorkerUpdate(**{**vars(self), **fields})


@dataclass(frozen=True)
class ReportRecord:
    endpoint: str
    worker_id: str
    version: int
    kind: str
    body: dict
    at: datetime
