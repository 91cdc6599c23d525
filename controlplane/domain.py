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
