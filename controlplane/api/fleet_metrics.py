"""Fleet and rollout metrics, named as Argo Rollouts and Flagger name theirs.

Gauges come from a snapshot of the stored state that a background task refreshes (scrapes never touch
the database, and every replica shows the same values: aggregate them with max, not sum). Counters
and the propagation histogram count what this replica's own agent streams saw (aggregate with sum).
"""

from __future__ import annotations

import asyncio
import logging
import re

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from controlplane.blocking import run_blocking
from controlplane.services.telemetry import EndpointTelemetry, TelemetryService
from mixprec.errors import MixprecError

log = logging.getLogger(__name__)

ROLLOUT_PHASES = ("RUNNING", "PAUSED", "SUCCEEDED", "ROLLED_BACK", "ABORTED")
# Flagger's canary status: 0 progressing, 1 succeeded, 2 failed.
ROLLOUT_STATUS = {"RUNNING": 0, "PAUSED": 0, "SUCCEEDED": 1, "ROLLED_BACK": 2, "ABORTED": 2}

# A NACK's free-text error, reduced to a label with few values (a label per message would explode).
NACK_REASONS = (
    ("precision_not_allowed", re.compile(r"does not run|cannot run|not allowed|unsupported precision", re.I)),
    ("non_finite_weights", re.compile(r"\bnan\b|non-finite|\binf\b|overflow", re.I)),
    ("unknown_layer", re.compile(r"unknown layer|not in the (catalog|model)|no layer", re.I)),
    ("out_of_memory", re.compile(r"out of memory|\boom\b|cannot allocate", re.I)),
)


def nack_reason(error: str) -> str:
    return next((name for name, pattern in NACK_REASONS if pattern.search(error)), "other")


class FleetMetrics:
    def __init__(self, registry: CollectorRegistry, telemetry: TelemetryService, interval: float = 5.0):
        self._telemetry = telemetry
        self._interval = interval
        self._snapshot: list[EndpointTelemetry] = []
        self.nacks = Counter("mixprec_nacks", "Assignments a worker refused, by reason", ["endpoint", "reason"],
                             registry=registry)
        self.propagation = Histogram(
            "mixprec_policy_propagation_seconds", "Time from sending a policy to a worker to its ACK",
            ["endpoint"], registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        registry.register(self)

    # --- what the agent streams tell this replica ------------------------------------------------

    def acked(self, endpoint: str, seconds: float) -> None:
        self.propagation.labels(endpoint).observe(seconds)

    def nacked(self, endpoint: str, error: str) -> None:
        self.nacks.labels(endpoint, nack_reason(error)).inc()

    # --- the stored state ------------------------------------------------------------------------

    async def refresh(self) -> None:
        self._snapshot = await run_blocking(self._telemetry.snapshot)

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except MixprecError as err:
                log.warning("fleet metrics not refreshed: %s", err)
            except Exception:  # noqa: BLE001 - metrics must never take the control plane down
                log.exception("fleet metrics refresh failed")
            await asyncio.sleep(self._interval)

    def describe(self):
        return []  # families are built at collect time from the snapshot

    def collect(self):
        def gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["endpoint", *labels])

        active = gauge("mixprec_endpoint_active_version", "Policy version active on the endpoint")
        workers = gauge("mixprec_workers", "Workers the endpoint knows of")
        connected = gauge("mixprec_workers_connected", "Workers with a live stream")
        disconnected = gauge("mixprec_workers_disconnected", "Workers that lost their stream within the last hour")
        applied = gauge("mixprec_worker_applied_version", "Policy version each worker confirmed (ACK)", "worker")
        quality = gauge("mixprec_quality_delta", "Mean quality delta (policy - base) over workers whose latest "
                        "report is this version", "version", "metric")
        info = gauge("mixprec_rollout_info", "The endpoint's latest rollout (Argo Rollouts' rollout_info)",
                     "rollout", "phase", "from_version", "to_version")
        phase = gauge("mixprec_rollout_phase", "1 for the latest rollout's phase, 0 for the others", "phase")
        status = gauge("mixprec_rollout_status",
                       "Latest rollout: 0 progressing, 1 succeeded, 2 failed (Flagger's canary status)")
        step = gauge("mixprec_rollout_step", "Current step of the latest rollout (1-based)")
        steps = gauge("mixprec_rollout_steps", "Number of steps of the latest rollout")
        weight = gauge("mixprec_rollout_weight",
                       "Percent of connected workers on the new version (Flagger's canary weight)")
        failed = gauge("mixprec_rollout_failed_checks", "Failed checks of the latest rollout")
        updated = gauge("mixprec_rollout_updated_timestamp_seconds", "When the latest rollout last changed (Unix time)")
        limit = gauge("mixprec_rollout_guardrail_limit", "Worsening a guardrail allows", "metric")
        worse = gauge("mixprec_rollout_guardrail_worsening",
                      "Largest worsening reported by a new-version worker of the open rollout", "metric")
        for t in self._snapshot:
            active.add_metric([t.name], t.active_version)
            workers.add_metric([t.name], len(t.workers))
            connected.add_metric([t.name], len(t.connected))
            disconnected.add_metric([t.name], len(t.disconnected))
            for w in t.workers:
                applied.add_metric([t.name, w.worker_id], w.applied_version)
            for (version, metric), delta in sorted(t.quality.items()):
                quality.add_metric([t.name, str(version), metric], delta)
            for metric, (measured, allowed) in sorted(t.guardrails.items()):
                limit.add_metric([t.name, metric], allowed)
                worse.add_metric([t.name, metric], measured)
            r = t.rollout
            if r is None:
                continue
            info.add_metric([t.name, str(r.id), r.state, str(r.from_version), str(r.to_version)], 1)
            for name in ROLLOUT_PHASES:
                phase.add_metric([t.name, name], 1 if r.state == name else 0)
            status.add_metric([t.name], ROLLOUT_STATUS.get(r.state, 0))
            step.add_metric([t.name], r.current_step + 1)
            steps.add_metric([t.name], len(r.steps))
            weight.add_metric([t.name], t.rollout_weight)
            failed.add_metric([t.name], r.failed_checks)
            updated.add_metric([t.name], r.updated_at.timestamp())
        yield from (active, workers, connected, disconnected, applied, quality, info, phase, status, step, steps,
                    weight, failed, updated, limit, worse)
