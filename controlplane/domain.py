"""What the control plane stores, as plain immutable values (no SQL, no proto)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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
    artifact: str = ""  # JSON stored with the version (e.g. sweep measurements)


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
class WorkerConnect:
    """A worker's hello, written behind like its ACKs once its endpoint is known to this replica."""

    endpoint: str
    worker_id: str
    replica: str
    running_version: int
    hardware: dict
    inference_address: str
    at: datetime


@dataclass(frozen=True)
class ReportRecord:
    endpoint: str
    worker_id: str
    version: int
    kind: str
    body: dict
    at: datetime
    id: int = 0
    report_id: str = ""  # the worker's id of the measurement: a resend is the same report


OPEN_ROLLOUT_STATES = ("RUNNING", "PAUSED")


@dataclass(frozen=True)
class RolloutStep:
    workers: int = 0       # an absolute count ...
    percent: float = 0.0   # ... or a share of the endpoint's workers

    def size(self, fleet: int) -> int:
        wanted = self.workers if self.workers else math.ceil(self.percent / 100 * fleet)
        return max(1, min(fleet, wanted))

    def label(self) -> str:
        return str(self.workers) if self.workers else f"{self.percent:g}%"


@dataclass(frozen=True)
class Guardrails:
    max_drop: dict[str, float]
    min_throughput_ratio: float = 0.0
    reports_per_step: int = 1
    bake_seconds: float = 0.0
    max_failed_checks: int = 0
    step_timeout_seconds: float = 300.0
    max_rise: dict[str, float] = field(default_factory=dict)  # metrics that must not rise (KL, perplexity)


@dataclass(frozen=True)
class Rollout:
    id: int
    endpoint: str
    from_version: int
    to_version: int
    steps: tuple[RolloutStep, ...]
    guardrails: Guardrails
    state: str
    current_step: int
    failed_checks: int
    last_report_id: int
    message: str
    new_workers: tuple[str, ...]
    last_checks: tuple[dict, ...]
    actor: str
    revision: int
    created_at: datetime
    step_started_at: datetime
    updated_at: datetime
    report_round: int = 0                    # bumped to ask the step's workers to send their reports again
    reports_asked_at: datetime | None = None

    @property
    def open(self) -> bool:
        return self.state in OPEN_ROLLOUT_STATES


@dataclass(frozen=True)
class TokenInfo:
    """A bearer token as stored: everything but the secret (only its hash is kept)."""

    name: str
    role: str
    endpoint: str | None
    created_by: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    worker_id: str | None = None   # an agent token that may connect as this one worker id only
    bootstrap: bool = False        # an agent token that issues each worker id its own token, once
    id: int = 0


@dataclass(frozen=True)
class Webhook:
    endpoint: str
    name: str
    url: str
    events: tuple[str, ...]
    created_by: str
    created_at: datetime
    id: int = 0
    last_audit_id: int = 0


@dataclass(frozen=True)
class Delivery:
    id: int
    endpoint: str
    webhook: str
    url: str
    audit_id: int
    event: str
    payload: dict
    state: str
    attempts: int
    status_code: int
    error: str
    created_at: datetime
    finished_at: datetime | None = None


@dataclass(frozen=True)
class WorkerLease:
    """The live stream that holds a worker id, as every replica sees it."""

    endpoint: str
    worker_id: str
    token_id: int | None
    token_name: str
    replica: str
    stream: str
    expires_at: datetime
