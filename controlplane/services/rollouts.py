"""Progressive rollouts: start, pause, resume, abort, promote, and the controller step that advances them."""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Callable, Sequence

from controlplane import domain
from controlplane.services.checks import check_name, check_text, check_version
from controlplane.services.fleet import STALE_AFTER
from controlplane.services.rollout_analysis import choose_new_version_workers, quality_checks, throughput_check
from controlplane.storage.repositories import utcnow
from controlplane.storage.unit_of_work import UnitOfWork
from mixprec import policy as lang
from mixprec.errors import FailedPrecondition, FieldError, InvalidArgument, Unavailable
from mixprec.metrics import limit_errors

log = logging.getLogger(__name__)

DEFAULT_STEPS = (domain.RolloutStep(workers=1), domain.RolloutStep(percent=25), domain.RolloutStep(percent=100))
MAX_STEPS = 20
# A step short of reports at its timeout asks its workers to report again, and waits this long more.
ASK_AGAIN_GRACE = timedelta(seconds=30)
MAX_STEP_SECONDS = 7 * 86400


def validate_plan(steps: Sequence[domain.RolloutStep], guardrails: domain.Guardrails) -> list[FieldError]:
    errors = []
    if len(steps) > MAX_STEPS:
        errors.append(FieldError("steps", f"has {len(steps)} steps; the limit is {MAX_STEPS}"))
    for i, step in enumerate(steps):
        if bool(step.workers) == bool(step.percent):
            errors.append(FieldError(f"steps[{i}]", "give either a worker count or a percentage"))
        elif step.percent and not (0 < step.percent <= 100 and math.isfinite(step.percent)):
            errors.append(FieldError(f"steps[{i}].percent", f"{step.percent:g} is not in (0, 100]"))
    if steps and steps[-1] != domain.RolloutStep(percent=100):
        errors.append(FieldError(f"steps[{len(steps) - 1}]",
                                 f"the last step is {steps[-1].label()}; a rollout must end at 100%"))
    for word, limits in (("drop", guardrails.max_drop), ("rise", guardrails.max_rise)):
        for metric, limit in limits.items():
            if not metric or not math.isfinite(limit) or limit < 0:
                errors.append(FieldError(f"guardrails.max_{word}[{metric}]", f"{limit!r} must be a number >= 0"))
        errors += limit_errors(limits, word, "guardrails.max_{word}[{metric}]")
    for name in ("min_throughput_ratio", "bake_seconds", "step_timeout_seconds"):
        value = getattr(guardrails, name)
        if not math.isfinite(value) or value < 0:
            errors.append(FieldError(f"guardrails.{name}", f"{value!r} must be a number >= 0"))
        elif name.endswith("_seconds") and value > MAX_STEP_SECONDS:
            errors.append(FieldError(f"guardrails.{name}", f"{value:g} is over the limit of {MAX_STEP_SECONDS} (7 days)"))
    return errors


class RolloutService:
    def __init__(self, uow: Callable[[], UnitOfWork]):
        self._uow = uow

    def start(self, endpoint: str, version: int, steps: Sequence[domain.RolloutStep],
              guardrails: domain.Guardrails, actor: str = "") -> domain.Rollout:
        check_name(endpoint, "endpoint")
        check_version(version, "version")
        check_text(actor=actor)
        steps = tuple(steps) or DEFAULT_STEPS
        guardrails = replace(
            guardrails, reports_per_step=guardrails.reports_per_step or 1,
            step_timeout_seconds=guardrails.step_timeout_seconds or 300.0,
        )
        errors = validate_plan(steps, guardrails)
        if errors:
            raise InvalidArgument(errors)
        with self._uow() as uow:
            current = uow.endpoints.get(endpoint, for_update=True)
            policy = uow.policies.get(endpoint, version)
            lang.resolve_or_raise(policy.spec, current.layers, current.base_precision)
            if current.active_version == version:
                raise FailedPrecondition(f"version {version} is already active on {endpoint!r}; nothing to roll out")
            existing = uow.rollouts.open_for(endpoint)
            if existing is not None:
                raise FailedPrecondition(
                    f"endpoint {endpoint!r} already has rollout {existing.id} ({existing.state}, "
                    f"v{existing.from_version} -> v{existing.to_version}); abort it first"
                )
            now = utcnow()
            reports = uow.reports.since(endpoint)
            rollout = uow.rollouts.add(
                domain.Rollout(
                    id=0, endpoint=endpoint, from_version=current.active_version, to_version=version, steps=steps,
                    guardrails=guardrails, state="RUNNING", current_step=0, failed_checks=0,
                    last_report_id=reports[-1].id if reports else 0, message="starting step 1",
                    new_workers=(), last_checks=(), actor=actor, revision=0, created_at=now,
                    step_started_at=now, updated_at=now,
                )
            )
            uow.audit.record(endpoint, "rollout.start", actor, "", rollout=rollout.id, version=version,
                             steps=[s.label() for s in steps])
            uow.commit()
        return rollout

    def get(self, endpoint: str, rollout_id: int = 0) -> domain.Rollout:
        check_name(endpoint, "endpoint")
        with self._uow() as uow:
            return uow.rollouts.get(endpoint, rollout_id)

    def list(self, endpoint: str) -> list[domain.Rollout]:
        check_name(endpoint, "endpoint")
        with self._uow() as uow:
            uow.endpoints.get(endpoint)
            return uow.rollouts.list(endpoint)

    def pause(self, endpoint: str, actor: str = "", reason: str = "") -> domain.Rollout:
        return self._transition(endpoint, ("RUNNING",), "PAUSED", actor, reason or "paused by an operator")

    def resume(self, endpoint: str, actor: str = "", reason: str = "") -> domain.Rollout:
        # The step's clock starts again and its workers are asked to report again: an inconclusive
        # step gets a full timeout to gather reports, including those lost on the way.
        return self._transition(endpoint, ("PAUSED",), "RUNNING", actor, reason or "resumed by an operator",
                                ask_reports=True, step_started_at=utcnow())

    def abort(self, endpoint: str, actor: str = "", reason: str = "") -> domain.Rollout:
        return self._transition(endpoint, domain.OPEN_ROLLOUT_STATES, "ABORTED", actor,
                                reason or "aborted by an operator; every worker returns to the old version")

    def promote(self, endpoint: str, actor: str = "", reason: str = "") -> domain.Rollout:
        """Skip the remaining steps: the new version becomes active on every worker now (an operator's call,
        e.g. when the canary has been watched long enough); the guardrails are not consulted again."""
        check_name(endpoint, "endpoint")
        check_text(actor=actor, reason=reason)
        with self._uow() as uow:
            uow.endpoints.get(endpoint, for_update=True)
            rollout = uow.rollouts.open_for(endpoint)
            if rollout is None:
                raise FailedPrecondition(f"endpoint {endpoint!r} has no open rollout to promote")
            message = (f"promoted at step {rollout.current_step + 1}/{len(rollout.steps)}: v{rollout.to_version} is "
                       f"active everywhere" + (f" ({reason})" if reason else ""))
            updated = replace(rollout, state="SUCCEEDED", message=message, updated_at=utcnow())
            if not uow.rollouts.save(updated):
                raise FailedPrecondition(f"rollout {rollout.id} changed meanwhile; look again and retry")
            _activate_new_version(uow, rollout, actor, f"rollout {rollout.id} promoted" + (f": {reason}" if reason else ""))
            uow.audit.record(endpoint, "rollout.promote", actor, reason or message, rollout=rollout.id,
                             version=rollout.to_version, step=rollout.current_step)
            uow.commit()
        return replace(updated, revision=rollout.revision + 1)

    def _transition(self, endpoint: str, allowed: Sequence[str], state: str, actor: str, message: str,
                    ask_reports: bool = False, **changes) -> domain.Rollout:
        check_name(endpoint, "endpoint")
        check_text(actor=actor, reason=message)
        with self._uow() as uow:
            uow.endpoints.get(endpoint, for_update=True)
            rollout = uow.rollouts.open_for(endpoint)
            if rollout is None or rollout.state not in allowed:
                now_state = rollout.state if rollout else "no open rollout"
                raise FailedPrecondition(f"endpoint {endpoint!r} has {now_state}; this needs a rollout that is "
                                         f"{' or '.join(allowed)}")
            if ask_reports:
                changes.update(report_round=rollout.report_round + 1, reports_asked_at=utcnow())
            updated = replace(rollout, state=state, message=message, updated_at=utcnow(), **changes)
            if not uow.rollouts.save(updated):
                raise FailedPrecondition(f"rollout {rollout.id} changed meanwhile; look again and retry")
            uow.audit.record(endpoint, f"rollout.{state.lower()}", actor, message, rollout=rollout.id)
            uow.commit()
        return replace(updated, revision=rollout.revision + 1)

    # --- the controller -------------------------------------------------------------------------

    def advance_all(self) -> list[str]:
        """One controller pass over every running rollout; returns the endpoints whose target changed."""
        with self._uow() as uow:
            running = uow.rollouts.running()
        changed = []
        for rollout in running:
            # Each rollout on its own: one that cannot be driven is marked FAILED and never stops the others.
            try:
                if self._advance(rollout.endpoint):
                    changed.append(rollout.endpoint)
            except Unavailable:
                raise
            except Exception as err:  # noqa: BLE001 - whatever broke, it broke this rollout only
                incident = uuid.uuid4().hex[:12]
                log.exception("rollout %d of %s failed (incident %s)", rollout.id, rollout.endpoint, incident)
                if self._fail(rollout, f"the controller could not drive it ({type(err).__name__}, incident {incident})"):
                    changed.append(rollout.endpoint)
        return changed

    def _fail(self, rollout: domain.Rollout, reason: str) -> bool:
        with self._uow() as uow:
            current = uow.rollouts.open_for(rollout.endpoint)
            if current is None or current.id != rollout.id:
                return False
            if not uow.rollouts.save(replace(current, state="FAILED", message=reason, updated_at=utcnow())):
                return False
            uow.audit.record(rollout.endpoint, "rollout.failed", "controller", reason, rollout=rollout.id)
            uow.commit()
        return True

    def _advance(self, endpoint: str) -> bool:
        with self._uow() as uow:
            rollout = uow.rollouts.open_for(endpoint)
            if rollout is None or rollout.state != "RUNNING":
                return False
            now = utcnow()
            connected = [w.worker_id for w in uow.workers.list(endpoint)
                         if w.connected and w.last_seen >= now - STALE_AFTER]
            updated, target_changed = self._next(uow, rollout, connected, now)
            if updated is None or not uow.rollouts.save(replace(updated, updated_at=now)):
                return False  # nothing to do, or another replica moved this rollout first
            if updated.state == "RUNNING" and (updated.current_step != rollout.current_step
                                               or (updated.new_workers and not rollout.new_workers)):
                uow.audit.record(endpoint, "rollout.step", "controller", updated.message, rollout=rollout.id,
                                 step=updated.current_step + 1, workers=len(updated.new_workers))
            if updated.report_round != rollout.report_round:
                uow.audit.record(endpoint, "rollout.reports_requested", "controller", updated.message,
                                 rollout=rollout.id, step=updated.current_step)
            if updated.state != rollout.state:
                uow.audit.record(endpoint, f"rollout.{updated.state.lower()}", "controller", updated.message,
                                 rollout=rollout.id, step=updated.current_step)
            if updated.state == "SUCCEEDED":
                _activate_new_version(uow, rollout, "controller", f"rollout {rollout.id} succeeded")
            uow.commit()
        return target_changed or updated.state != rollout.state

    def _next(self, uow: UnitOfWork, rollout: domain.Rollout, connected: list[str], now):
        """The rollout's next state, and whether workers' assignments change with it."""
        step = rollout.steps[rollout.current_step]
        if not rollout.new_workers:
            chosen = choose_new_version_workers(connected, step)
            if not chosen:
                return self._inconclusive(rollout, now, "no connected worker to take the new version")
            return replace(rollout, new_workers=chosen,
                           message=f"step {rollout.current_step + 1}/{len(rollout.steps)} ({step.label()}): "
                                   f"{len(chosen)} worker(s) on v{rollout.to_version}"), True

        g = rollout.guardrails
        fresh = uow.reports.since(rollout.endpoint, after_id=rollout.last_report_id)
        last_id = fresh[-1].id if fresh else rollout.last_report_id
        new_quality = [r for r in fresh if r.kind == "quality" and r.version == rollout.to_version
                       and r.worker_id in rollout.new_workers]
        per_report = [quality_checks(report, g) for report in new_quality]
        checks = [c for report_checks in per_report for c in report_checks]
        failed_reports = sum(not all(c.passed for c in report_checks) for report_checks in per_report)
        step_reports = uow.reports.since(rollout.endpoint, at_or_after=rollout.step_started_at,
                                         versions=(rollout.to_version,), kind="quality")
        passing = [r for r in step_reports if r.worker_id in rollout.new_workers
                   and all(c.passed for c in quality_checks(r, g))]
        serving = uow.reports.since(rollout.endpoint, at_or_after=rollout.step_started_at, kind="serving")
        fresh_serving = any(r.kind == "serving" and r.worker_id in rollout.new_workers for r in fresh)
        # Judged once per new batch of serving reports, not on every controller pass.
        ratio = fresh_serving and throughput_check(
            [r for r in serving if r.version == rollout.to_version and r.worker_id in rollout.new_workers],
            [r for r in serving if r.version == rollout.from_version and r.worker_id not in rollout.new_workers],
            g,
        )
        ratio = ratio or None
        if ratio is not None:
            checks.append(ratio)
        failures = failed_reports + (0 if ratio is None or ratio.passed else 1)
        recorded = tuple(vars(c) for c in checks) or rollout.last_checks
        rollout = replace(rollout, last_report_id=last_id, last_checks=recorded,
                          failed_checks=rollout.failed_checks + failures)

        if rollout.failed_checks > g.max_failed_checks:
            broken = "; ".join(c.describe() for c in checks if not c.passed)
            return replace(rollout, state="ROLLED_BACK",
                           message=f"rolled back at step {rollout.current_step + 1}: {rollout.failed_checks} failed "
                                   f"check(s), more than {g.max_failed_checks} allowed: {broken}"), True
        baked = now - rollout.step_started_at >= timedelta(seconds=g.bake_seconds)
        if len({r.worker_id for r in passing}) >= min(g.reports_per_step, len(rollout.new_workers)) \
                and len(passing) >= g.reports_per_step and baked and failures == 0:
            if rollout.current_step + 1 == len(rollout.steps):
                return replace(rollout, state="SUCCEEDED",
                               message=f"v{rollout.to_version} passed every step and is active everywhere"), True
            following = rollout.current_step + 1
            chosen = choose_new_version_workers(connected, rollout.steps[following], rollout.new_workers)
            return replace(rollout, current_step=following, new_workers=chosen, step_started_at=now,
                           message=f"step {following + 1}/{len(rollout.steps)} ({rollout.steps[following].label()}): "
                                   f"{len(chosen)} worker(s) on v{rollout.to_version}"), True
        waiting, asked = self._inconclusive(
            rollout, now, f"only {len(passing)} of {g.reports_per_step} passing quality report(s) from "
                          f"new-version workers")
        if waiting is not None:
            return waiting, asked
        return (rollout if (fresh or failures) else None), False

    @staticmethod
    def _inconclusive(rollout: domain.Rollout, now, why: str) -> tuple[domain.Rollout | None, bool]:
        """At the step's timeout: first ask the step's workers to report again (a report may have been
        lost with a replica), then, after a grace period, pause. Returns (new state, asked now)."""
        timeout = timedelta(seconds=rollout.guardrails.step_timeout_seconds)
        if now - rollout.step_started_at < timeout:
            return None, False
        asked = rollout.reports_asked_at
        if asked is None or asked < rollout.step_started_at:
            return replace(rollout, report_round=rollout.report_round + 1, reports_asked_at=now,
                           message=f"step {rollout.current_step + 1}: {why} after {timeout.total_seconds():g}s; "
                                   "asked the step's workers to report again"), True
        if now - asked < min(ASK_AGAIN_GRACE, timeout):
            return None, False
        return replace(rollout, state="PAUSED",
                       message=f"inconclusive at step {rollout.current_step + 1}: {why} after "
                               f"{timeout.total_seconds():g}s and a request to report again; resume to wait "
                               "again, or abort"), False


def _activate_new_version(uow: UnitOfWork, rollout: domain.Rollout, actor: str, reason: str) -> None:
    """A rollout that ends well makes its version the endpoint's active one, recorded as an activation."""
    current = uow.endpoints.get(rollout.endpoint, for_update=True)
    uow.endpoints.set_active(rollout.endpoint, rollout.to_version)
    uow.activations.add(rollout.endpoint, rollout.to_version, current.active_version, "rollout", actor, reason)
