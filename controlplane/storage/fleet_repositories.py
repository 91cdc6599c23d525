"""Repositories of the fleet: activation history, worker state, reports."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from controlplane import domain
from controlplane.storage.repositories import EndpointScoped, aware, utcnow
from controlplane.storage.tables import ActivationRow, ReportRow, WorkerRow


class ActivationRepository(EndpointScoped):
    def add(self, endpoint: str, version: int, previous: int, kind: str, actor: str, reason: str) -> None:
        self._session.add(
            ActivationRow(
                endpoint_id=self._endpoint_id(endpoint), version=version, previous_version=previous, kind=kind,
                actor=actor, reason=reason, rolled_back=False, at=utcnow(),
            )
        )

    def history(self, endpoint: str) -> list[domain.Activation]:
        """Newest first."""
        rows = self._session.scalars(
            select(ActivationRow)
            .where(ActivationRow.endpoint_id == self._endpoint_id(endpoint))
            .order_by(ActivationRow.id.desc())
        )
        return [
            domain.Activation(endpoint, r.version, r.previous_version, r.kind, r.actor, r.reason, r.rolled_back,
                              aware(r.at))
            for r in rows
        ]

    def mark_rolled_back(self, endpoint: str, version: int) -> None:
        self._session.execute(
            update(ActivationRow)
            .where(ActivationRow.endpoint_id == self._endpoint_id(endpoint), ActivationRow.version == version)
            .values(rolled_back=True)
        )


def _worker(row: WorkerRow, endpoint: str) -> domain.WorkerState:
    return domain.WorkerState(
        endpoint=endpoint, worker_id=row.worker_id, connected=row.connected, applied_version=row.applied_version,
        last_ack_version=row.last_ack_version, last_nack_version=row.last_nack_version,
        last_nack_error=row.last_nack_error, hardware=dict(row.hardware), inference_address=row.inference_address,
        last_quality=dict(row.last_quality), last_serving=dict(row.last_serving), first_seen=aware(row.first_seen),
        last_seen=aware(row.last_seen),
    )


class WorkerRepository(EndpointScoped):
    def _row(self, endpoint: str, worker_id: str) -> WorkerRow | None:
        return self._session.scalars(
            select(WorkerRow).where(
                WorkerRow.endpoint_id == self._endpoint_id(endpoint), WorkerRow.worker_id == worker_id
            )
        ).one_or_none()

    def get(self, endpoint: str, worker_id: str) -> domain.WorkerState | None:
        row = self._row(endpoint, worker_id)
        return _worker(row, endpoint) if row else None

    def connect(self, endpoint: str, worker_id: str, replica: str, running_version: int, hardware: dict,
                inference_address: str) -> domain.WorkerState:
        now = utcnow()
        row = self._row(endpoint, worker_id)
        if row is None:
            row = WorkerRow(
                endpoint_id=self._endpoint_id(endpoint), worker_id=worker_id, last_ack_version=0,
                last_nack_version=0, last_nack_error="", last_quality={}, last_serving={}, first_seen=now,
            )
            self._session.add(row)
        row.connected, row.replica, row.applied_version = True, replica, running_version
        row.hardware, row.inference_address, row.last_seen = hardware, inference_address, now
        self._session.flush()
        return _worker(row, endpoint)

    def connect_all(self, connects: Iterable[domain.WorkerConnect]) -> None:
        """Inserts or refreshes the rows of workers that said hello (one executemany)."""
        rows = [
            {"endpoint_id": self._endpoint_id(c.endpoint), "worker_id": c.worker_id, "connected": True,
             "replica": c.replica, "applied_version": c.running_version, "hardware": c.hardware,
             "inference_address": c.inference_address, "last_seen": c.at, "first_seen": c.at, "last_ack_version": 0,
             "last_nack_version": 0, "last_nack_error": "", "last_quality": {}, "last_serving": {}}
            for c in connects
        ]
        if not rows:
            return
        insert = _dialect(self._session).insert(WorkerRow.__table__)
        refreshed = ("connected", "replica", "applied_version", "hardware", "inference_address", "last_seen")
        statement = insert.on_conflict_do_update(index_elements=["endpoint_id", "worker_id"],
                                                 set_={name: insert.excluded[name] for name in refreshed})
        self._session.connection().execute(statement, rows)

    def apply(self, changes: Iterable[domain.WorkerUpdate]) -> None:
        """Writes many workers' changes with one executemany per set of changed fields (thousands of
        ACKs after a push cost one statement, not thousands)."""
        groups: dict[tuple[str, ...], list[dict]] = defaultdict(list)
        for change in changes:
            values = {k: v for k, v in vars(change).items()
                      if v is not None and k not in ("endpoint", "worker_id", "seen_at")}
            values["last_seen"] = change.seen_at or utcnow()
            groups[tuple(sorted(values))].append(
                {"where_endpoint": self._endpoint_id(change.endpoint), "where_worker": change.worker_id, **values}
            )
        table = WorkerRow.__table__
        statement = table.update().where(table.c.endpoint_id == bindparam("where_endpoint"),
                                         table.c.worker_id == bindparam("where_worker"))
        for rows in groups.values():
            self._session.connection().execute(statement, rows)

    def disconnect_replica(self, replica: str) -> None:
        """A replica that stops cleanly lets go of its streams' workers."""
        self._session.execute(update(WorkerRow).where(WorkerRow.replica == replica).values(connected=False))

    def list(self, endpoint: str) -> list[domain.WorkerState]:
        rows = self._session.scalars(
            select(WorkerRow).where(WorkerRow.endpoint_id == self._endpoint_id(endpoint)).order_by(WorkerRow.worker_id)
        )
        return [_worker(r, endpoint) for r in rows]


class ReportRepository(EndpointScoped):
    def add_all(self, reports: Iterable[domain.ReportRecord]) -> None:
        """Stores reports; one the worker sent before (same report id) is not stored again: its arrival
        time moves on instead, so a report resent on a rollout's request counts for the step that asked,
        while a resend after a lost ACK never counts twice."""
        rows = [
            {"endpoint_id": self._endpoint_id(r.endpoint), "worker_id": r.worker_id, "version": r.version,
             "kind": r.kind, "body": r.body, "at": r.at, "report_id": r.report_id or None}
            for r in _latest_per_report(reports)
        ]
        if not rows:
            return
        insert = _dialect(self._session).insert(ReportRow.__table__)
        statement = insert.on_conflict_do_update(index_elements=["endpoint_id", "worker_id", "report_id"],
                                                 set_={"at": insert.excluded.at})
        self._session.connection().execute(statement, rows)

    def since(self, endpoint: str, after_id: int = 0, kind: str | None = None, at_or_after=None,
              versions: tuple[int, ...] | None = None) -> list[domain.ReportRecord]:
        """Reports of an endpoint in arrival order, filtered by id, kind, time and version."""
        query = select(ReportRow).where(ReportRow.endpoint_id == self._endpoint_id(endpoint), ReportRow.id > after_id)
        if kind:
            query = query.where(ReportRow.kind == kind)
        if at_or_after is not None:
            query = query.where(ReportRow.at >= at_or_after)
        if versions is not None:
            query = query.where(ReportRow.version.in_(versions))
        return [
            domain.ReportRecord(endpoint, r.worker_id, r.version, r.kind, dict(r.body), aware(r.at), r.id,
                                r.report_id or "")
            for r in self._session.scalars(query.order_by(ReportRow.id))
        ]


def _dialect(session):
    """The dialect module whose `insert` has ON CONFLICT (Postgres and SQLite both do)."""
    return postgresql if session.get_bind().dialect.name == "postgresql" else sqlite


def _latest_per_report(reports: Iterable[domain.ReportRecord]) -> list[domain.ReportRecord]:
    """One row per report id in a batch, in arrival order (Postgres refuses to update a row twice in
    one statement); reports without an id are all kept."""
    batch: dict[tuple, domain.ReportRecord] = {}
    for position, report in enumerate(reports):
        key = (report.endpoint, report.worker_id, report.report_id) if report.report_id else (position,)
        batch.pop(key, None)
        batch[key] = report
    return list(batch.values())
