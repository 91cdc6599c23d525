"""Rollouts in SQL. Every change is a compare-and-swap on `revision`, so replicas never double-step."""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from controlplane import domain
from controlplane.storage.repositories import EndpointScoped, aware
from controlplane.storage.tables import EndpointRow, RolloutRow
from mixprec.errors import FailedPrecondition, NotFound

MUTABLE = ("state", "current_step", "failed_checks", "last_report_id", "message", "new_workers", "last_checks",
           "step_started_at", "updated_at", "report_round", "reports_asked_at")


def _rollout(row: RolloutRow, endpoint: str) -> domain.Rollout:
    return domain.Rollout(
        id=row.id, endpoint=endpoint, from_version=row.from_version, to_version=row.to_version,
        steps=tuple(domain.RolloutStep(**s) for s in row.steps), guardrails=domain.Guardrails(**row.guardrails),
        state=row.state, current_step=row.current_step, failed_checks=row.failed_checks,
        last_report_id=row.last_report_id, message=row.message, new_workers=tuple(row.new_workers),
        last_checks=tuple(row.last_checks), actor=row.actor, revision=row.revision,
        created_at=aware(row.created_at), step_started_at=aware(row.step_started_at),
        updated_at=aware(row.updated_at), report_round=row.report_round or 0,
        reports_asked_at=aware(row.reports_asked_at) if row.reports_asked_at else None,
    )


class RolloutRepository(EndpointScoped):
    def add(self, rollout: domain.Rollout) -> domain.Rollout:
        row = RolloutRow(
            endpoint_id=self._endpoint_id(rollout.endpoint), from_version=rollout.from_version,
            to_version=rollout.to_version, steps=[asdict(s) for s in rollout.steps],
            guardrails=asdict(rollout.guardrails), state=rollout.state, current_step=0, failed_checks=0,
            last_report_id=rollout.last_report_id, message=rollout.message, new_workers=list(rollout.new_workers),
            last_checks=[], actor=rollout.actor, revision=0, created_at=rollout.created_at,
            step_started_at=rollout.step_started_at, updated_at=rollout.updated_at, report_round=0,
        )
        self._session.add(row)
        try:
            self._session.flush()
        except IntegrityError:
            raise FailedPrecondition(
                f"endpoint {rollout.endpoint!r} already has a rollout in progress; abort it or wait for it to end"
            ) from None
        return _rollout(row, rollout.endpoint)

    def _query(self, endpoint: str):
        return select(RolloutRow).where(RolloutRow.endpoint_id == self._endpoint_id(endpoint))

    def open_for(self, endpoint: str) -> domain.Rollout | None:
        row = self._session.scalars(
            self._query(endpoint).where(RolloutRow.state.in_(domain.OPEN_ROLLOUT_STATES))
        ).one_or_none()
        return _rollout(row, endpoint) if row else None

    def get(self, endpoint: str, rollout_id: int = 0) -> domain.Rollout:
        query = self._query(endpoint)
        query = query.where(RolloutRow.id == rollout_id) if rollout_id else query.order_by(RolloutRow.id.desc())
        row = self._session.scalars(query.limit(1)).first()
        if row is None:
            what = f"rollout {rollout_id}" if rollout_id else "any rollout"
            raise NotFound(f"endpoint {endpoint!r} has no {what} (start one with `mixprec rollout start`)")
        return _rollout(row, endpoint)

    def list(self, endpoint: str) -> list[domain.Rollout]:
        return [_rollout(r, endpoint) for r in self._session.scalars(self._query(endpoint).order_by(RolloutRow.id))]

    def running(self) -> list[domain.Rollout]:
        rows = self._session.execute(
            select(RolloutRow, EndpointRow.name)
            .join(EndpointRow, EndpointRow.id == RolloutRow.endpoint_id)
            .where(RolloutRow.state == "RUNNING")
            .order_by(RolloutRow.id)
        )
        return [_rollout(row, name) for row, name in rows]

    def save(self, rollout: domain.Rollout) -> bool:
        """Write the mutable fields if nobody else changed the rollout since it was read."""
        values = {name: getattr(rollout, name) for name in MUTABLE}
        values["new_workers"] = list(rollout.new_workers)
        values["last_checks"] = list(rollout.last_checks)
        result = self._session.execute(
            update(RolloutRow)
            .where(RolloutRow.id == rollout.id, RolloutRow.revision == rollout.revision)
            .values(**values, revision=rollout.revision + 1)
        )
        return result.rowcount == 1
