"""Worker-id leases: one row per live (endpoint, worker id), whichever replica holds its stream."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controlplane import domain
from controlplane.storage.repositories import aware
from controlplane.storage.tables import WorkerLeaseRow
from mixprec.errors import AlreadyExists


def _lease(row: WorkerLeaseRow) -> domain.WorkerLease:
    return domain.WorkerLease(row.endpoint, row.worker_id, row.token_id, row.token_name, row.replica, row.stream,
                              aware(row.expires_at))


class LeaseRepository:
    def __init__(self, session: Session):
        self._session = session

    def _row(self, endpoint: str, worker_id: str) -> WorkerLeaseRow | None:
        return self._session.scalars(select(WorkerLeaseRow).where(
            WorkerLeaseRow.endpoint == endpoint, WorkerLeaseRow.worker_id == worker_id).with_for_update()
        ).one_or_none()

    def get(self, endpoint: str, worker_id: str) -> domain.WorkerLease | None:
        """The lease, locked until the transaction ends (expired or not)."""
        row = self._row(endpoint, worker_id)
        return _lease(row) if row else None

    def hold(self, lease: domain.WorkerLease, now: datetime) -> None:
        """Gives the id to `lease`'s stream, replacing whatever lease it had."""
        row = self._row(lease.endpoint, lease.worker_id)
        if row is None:
            row = WorkerLeaseRow(endpoint=lease.endpoint, worker_id=lease.worker_id)
            self._session.add(row)
        row.token_id, row.token_name, row.replica, row.stream = (lease.token_id, lease.token_name, lease.replica,
                                                                 lease.stream)
        row.acquired_at, row.expires_at = now, lease.expires_at
        try:
            self._session.flush()
        except IntegrityError:  # two replicas inserted it at the same moment: the other one won
            raise AlreadyExists(f"worker id {lease.worker_id!r} of endpoint {lease.endpoint!r} was claimed by "
                                "another stream at the same moment") from None

    def release(self, endpoint: str, worker_id: str, stream: str) -> None:
        self._session.execute(delete(WorkerLeaseRow).where(
            WorkerLeaseRow.endpoint == endpoint, WorkerLeaseRow.worker_id == worker_id,
            WorkerLeaseRow.stream == stream))

    def drop(self, endpoint: str, worker_id: str) -> domain.WorkerLease | None:
        row = self._row(endpoint, worker_id)
        if row is None:
            return None
        self._session.delete(row)
        return _lease(row)

    def extend(self, replica: str, until: datetime | None) -> set[str]:
        """Extends this replica's leases (unless `until` is None); returns the streams that hold one."""
        if until is not None:
            self._session.execute(update(WorkerLeaseRow).where(WorkerLeaseRow.replica == replica)
                                  .values(expires_at=until))
        return set(self._session.scalars(select(WorkerLeaseRow.stream).where(WorkerLeaseRow.replica == replica)))

    def release_streams(self, replica: str, streams: set[str]) -> None:
        self._session.execute(delete(WorkerLeaseRow).where(WorkerLeaseRow.replica == replica,
                                                           WorkerLeaseRow.stream.in_(sorted(streams))))

    def release_replica(self, replica: str) -> None:
        self._session.execute(delete(WorkerLeaseRow).where(WorkerLeaseRow.replica == replica))
