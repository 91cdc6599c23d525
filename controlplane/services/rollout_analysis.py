"""Pure rollout logic: which workers take the new version, and whether reports meet the guardrails."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from statistics import fmean
from typing import Iterable, Sequence

from controlplane import domain


def worker_rank(worker_id: str) -> int:
    """A stable position for a worker: the same id ranks the same on every replica and every restart."""
    return int.from_bytes(hashlib.sha256(worker_id.encode()).digest()[:8], "big")


def choose_new_version_workers(workers: Iterable[str], step: domain.RolloutStep, already: Sequence[str] = ()) -> tuple[str, ...]:
    """The first `step.size(n)` workers by rank; workers chosen at earlier steps stay chosen."""
    ranked = sorted(set(workers), key=lambda w: (worker_rank(w), w))
    if not ranked:
        return tuple(already)
    size = step.size(len(ranked))
    chosen = list(dict.fromkeys(w for w in already))
    for worker in ranked:
        if len(chosen) >= size:
            break
        if worker not in chosen:
            chosen.append(worker)
    return tuple(chosen)


@dataclass(frozen=True)
class Check:
    worker_id: str
    guardrail: str
    measured: float
    limit: float
    passed: bool

    def describe(self) -> str:
        relation = "<=" if self.guardrail.startswith(("max_drop", "max_rise")) else ">="
        verdict = "ok" if self.passed else "BROKEN"
        return f"{self.worker_id}: {self.guardrail} measured {self.measured:.6g} (limit {relation} {self.limit:g}) {verdict}"


def quality_checks(report: domain.ReportRecord, guardrails: domain.Guardrails) -> list[Check]:
    """One check per guarded metric, on the side it must not move to (drop = -delta, rise = delta); a metric
    the worker did not report counts as broken."""
    deltas = report.body.get("deltas", {})
    checks = []
    for word, sign, limits in (("drop", -1.0, guardrails.max_drop), ("rise", 1.0, guardrails.max_rise)):
        for metric, limit in sorted(limits.items()):
            name = f"max_{word}[{metric}]"
            if metric in deltas:
                moved = sign * float(deltas[metric])
                checks.append(Check(report.worker_id, name, moved, limit, moved <= limit))
            else:
                checks.append(Check(report.worker_id, name, float("nan"), limit, False))
    return checks


def throughput_check(new: Sequence[domain.ReportRecord], old: Sequence[domain.ReportRecord],
                     guardrails: domain.Guardrails) -> Check | None:
    """Mean serving throughput of new-version workers over old-version workers, if both reported."""
    if guardrails.min_throughput_ratio <= 0:
        return None
    new_rates = [float(r.body.get("throughput", 0.0)) for r in new]
    old_rates = [float(r.body.get("throughput", 0.0)) for r in old]
    if not new_rates or not old_rates or fmean(old_rates) <= 0:
        return None
    ratio = fmean(new_rates) / fmean(old_rates)
    return Check("fleet", "min_throughput_ratio", ratio, guardrails.min_throughput_ratio,
                 ratio >= guardrails.min_throughput_ratio)
