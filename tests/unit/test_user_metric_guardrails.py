"""A user's metric (unknown to the control plane) guarded by name: the side of the guardrail says which way
is worse, so the fleet view's worsening reads it the same way the rollout's checks do."""

from __future__ import annotations

from datetime import datetime, timezone

from controlplane import domain
from controlplane.services.rollout_analysis import quality_checks
from controlplane.services.telemetry import endpoint_telemetry

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def worker(worker_id: str, deltas: dict) -> domain.WorkerState:
    return domain.WorkerState("emb", worker_id, True, 2, 2, 0, "", {}, "", {"version": 2, "deltas": deltas}, {},
                              NOW, NOW)


def rollout(guardrails: domain.Guardrails) -> domain.Rollout:
    return domain.Rollout(1, "emb", 1, 2, (domain.RolloutStep(percent=100),), guardrails, "RUNNING", 0, 0, 0, "",
                          ("w1", "w2"), (), "test", 1, NOW, NOW, NOW)


def test_a_user_metric_guarded_against_a_rise_shows_its_rise_and_one_guarded_against_a_drop_its_drop():
    guardrails = domain.Guardrails(max_drop={"team_recall": 0.01}, max_rise={"team_log_loss": 0.02})
    workers = [worker("w1", {"team_log_loss": 0.03, "team_recall": -0.004}),
               worker("w2", {"team_log_loss": 0.01, "team_recall": -0.002})]
    endpoint = domain.Endpoint("emb", "bf16", "m", ("head",), NOW, 2, 2)
    telemetry = endpoint_telemetry(endpoint, workers, rollout(guardrails), NOW)
    assert telemetry.guardrails == {"team_log_loss": (0.03, 0.02), "team_recall": (0.004, 0.01)}
    report = domain.ReportRecord("emb", "w1", 2, "quality", {"deltas": workers[0].last_quality["deltas"]}, NOW)
    checks = {c.guardrail: (c.measured, c.passed) for c in quality_checks(report, guardrails)}
    assert checks == {"max_drop[team_recall]": (0.004, True), "max_rise[team_log_loss]": (0.03, False)}
