"""What the control plane's metrics show, read from the stored state (the same on every replica)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from statistics import fmean
from typing import Callable

from controlplane import domain
from controlplane.services.fleet import STALE_AFTER
from controlplane.storage.repositories import utcnow
from controlplane.storage.unit_of_work import UnitOfWork
from mixprec.errors import NotFound

# A worker that lost its stream counts as "disconnected" for this long, then as gone (scaled down).
RECENTLY_LOST = timedelta(hours=1)


@dataclass(frozen=True)
class EndpointTelemetry:
    name: str
    active_version: int
    workers: tuple[domain.WorkerState, ...]
    connected: tuple[str, ...]
    disconnected: tuple[str, ...]
    rollout: domain.Rollout | None
    quality: dict[tuple[int, str], float] = field(default_factory=dict)    # (version, metric) -> mean delta
    guardrails: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> (worsening, limit)

    @property
    def rollout_weight(self) -> float:
        """Share of connected workers on the rollout's new version, in percent (Flagger's canary weight)."""
        if self.rollout is None or not self.rollout.open or not self.connected:
            return 0.0
        on_new = [w for w in self.rollout.new_workers if w in self.connected]
        return 100.0 * len(on_new) / len(self.connected)


def endpoint_telemetry(endpoint: domain.Endpoint, workers: list[domain.WorkerState],
                       rollout: domain.Rollout | None, now: datetime) -> EndpointTelemetry:
    connected = tuple(w.worker_id for w in workers if w.connected and w.last_seen >= now - STALE_AFTER)
    disconnected = tuple(w.worker_id for w in workers
                         if w.worker_id not in connected and w.last_seen >= now - RECENTLY_LOST)
    by_key: dict[tuple[int, str], list[float]] = defaultdict(list)
    for worker in workers:
        report = worker.last_quality or {}
        version = int(report.get("version", 0) or 0)
        for metric, delta in (report.get("deltas") or {}).items():
            by_key[(version, metric)].append(float(delta))
    guardrails = {}
    if rollout is not None and rollout.open:
        latest = {w.worker_id: (w.last_quality or {}) for w in workers if w.worker_id in rollout.new_workers}
        # The side a guardrail is on says which way is worse: a user's metric is known here by that alone.
        sides = [(-1.0, rollout.guardrails.max_drop), (1.0, rollout.guardrails.max_rise)]
        for sign, limits in sides:
            for metric, limit in limits.items():
                measured = [sign * float(q["deltas"][metric]) for q in latest.values()
                            if int(q.get("version", 0) or 0) == rollout.to_version and metric in (q.get("deltas") or {})]
                if measured:
                    guardrails[metric] = (max(measured), limit)
    return EndpointTelemetry(
        name=endpoint.name, active_version=endpoint.active_version, workers=tuple(workers), connected=connected,
        disconnected=disconnected, rollout=rollout, quality={k: fmean(v) for k, v in by_key.items()},
        guardrails=guardrails,
    )


class TelemetryService:
    def __init__(self, uow: Callable[[], UnitOfWork]):
        self._uow = uow

    def snapshot(self) -> list[EndpointTelemetry]:
        now = utcnow()
        with self._uow() as uow:
            result = []
            for endpoint in uow.endpoints.list():
                try:
                    latest = uow.rollouts.get(endpoint.name)
                except NotFound:
                    latest = None
                result.append(endpoint_telemetry(endpoint, uow.workers.list(endpoint.name), latest, now))
            return result
