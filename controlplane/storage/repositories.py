"""Repositories: the only code that knows the tables. They return domain values."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controlplane import domain
from controlplane.storage.tables import AuditRow, Base, EndpointRow, PolicyVersionRow
from mixprec.errors import AlreadyExists, Conflict, NotFound
from mixprec.policy import PolicySpec, Rule


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(at: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def _endpoint(row: EndpointRow) -> domain.Endpoint:
    return domain.Endpoint(
        name=row.name,
        base_precision=row.base_precision,
        model=row.model,
        layers=tuple(row.layers),
        created_at=aware(row.created_at),
        latest_version=row.latest_version,
        active_version=row.active_version,
    )


def _policy(row: PolicyVersionRow, endpoint: str) -> domain.PolicyVersion:
    return domain.PolicyVersion(
        endpoint=endpoint,
        version=row.version,
        parent_version=row.parent_version,
        spec=PolicySpec(tuple(Rule(r["match"], r["precision"]) for r in row.rules), row.kv_cache),
        author=row.author,
        message=row.message,
        created_at=aware(row.created_at),
        artifact=row.artifact or "",
    )


class EndpointRepository:
    def __init__(self, session: Session):
        self._session = session

    def add(self, endpoint: domain.Endpoint) -> domain.Endpoint:
        row = EndpointRow(
            name=endpoint.name,
            base_precision=endpoint.base_precision,
            model=endpoint.model,
            layers=list(endpoint.layers),
            latest_version=0,
            active_version=0,
            created_at=endpoint.created_at,
        )
        self._session.add(row)
        try:
            self._session.flush()
        except IntegrityError:
            raise AlreadyExists(f"endpoint {endpoint.name!r} already exists") from None
        return _endpoint(row)

    def _row(self, name: str, for_update: bool = False) -> EndpointRow:
        query = select(EndpointRow).where(EndpointRow.name == name)
        if for_update:
            query = query.with_for_update()
        row = self._session.scalars(query).one_or_none()
        if row is None:
            raise endpoint_missing(name)
        return row

    def get(self, name: str, for_update: bool = False) -> domain.Endpoint:
        return _endpoint(self._row(name, for_update))

    def list(self) -> list[domain.Endpoint]:
        return [_endpoint(r) for r in self._session.scalars(select(EndpointRow).order_by(EndpointRow.name))]

    def advance_latest(self, name: str, expected: int, new: int) -> None:
        """Compare-and-swap of the latest version: fails with Conflict when another writer won."""
        result = self._session.execute(
            update(EndpointRow)
            .where(EndpointRow.name == name, EndpointRow.latest_version == expected)
            .values(latest_version=new)
        )
        if result.rowcount != 1:
            raise Conflict(f"endpoint {name!r} changed while this policy was written; re-read and retry")

    def set_active(self, name: str, version: int) -> None:
        self._session.execute(update(EndpointRow).where(EndpointRow.name == name).values(active_version=version))

    def set_layers(self, name: str, layers: list[str]) -> None:
        self._session.execute(update(EndpointRow).where(EndpointRow.name == name).values(layers=layers))

    def delete(self, name: str) -> int:
        """Deletes the endpoint and every row that belongs to it (any table with a key to it);
        returns how many policy versions went with it. The audit log is kept."""
        row = self._row(name, for_update=True)
        versions = row.latest_version
        for table in reversed(Base.metadata.sorted_tables):
            for fk in table.foreign_keys:
                if fk.column.table is EndpointRow.__table__:
                    self._session.execute(delete(table).where(fk.parent == row.id))
        self._session.delete(row)
        self._session.flush()
        return versions


def endpoint_missing(name: str) -> NotFound:
    return NotFound(f"endpoint {name!r} does not exist (see `mixprec endpoint list`)")


class EndpointScoped:
    """Base of the repositories whose rows belong to an endpoint, found by its name."""

    def __init__(self, session: Session):
        self._session = session
        self._ids: dict[str, int] = {}

    def _endpoint_id(self, endpoint: str) -> int:
        if endpoint not in self._ids:
            endpoint_id = self._session.scalar(select(EndpointRow.id).where(EndpointRow.name == endpoint))
            if endpoint_id is None:
                raise endpoint_missing(endpoint)
            self._ids[endpoint] = endpoint_id
        return self._ids[endpoint]


class PolicyRepository(EndpointScoped):

    def add(self, policy: domain.PolicyVersion) -> domain.PolicyVersion:
        row = PolicyVersionRow(
            endpoint_id=self._endpoint_id(policy.endpoint),
            version=policy.version,
            parent_version=policy.parent_version,
            rules=[{"match": r.match, "precision": r.precision} for r in policy.spec.rules],
            kv_cache=policy.spec.kv_cache,
            author=policy.author,
            message=policy.message,
            created_at=policy.created_at,
            artifact=policy.artifact or None,
        )
        self._session.add(row)
        try:
            self._session.flush()
        except IntegrityError:
            raise Conflict(
                f"version {policy.version} of endpoint {policy.endpoint!r} was written by someone else; re-read and retry"
            ) from None
        return _policy(row, policy.endpoint)

    def get(self, endpoint: str, version: int) -> domain.PolicyVersion:
        row = self._session.scalars(
            select(PolicyVersionRow).where(
                PolicyVersionRow.endpoint_id == self._endpoint_id(endpoint), PolicyVersionRow.version == version
            )
        ).one_or_none()
        if row is None:
            raise NotFound(f"endpoint {endpoint!r} has no policy version {version} (see `mixprec policy history {endpoint}`)")
        return _policy(row, endpoint)

    def list(self, endpoint: str) -> list[domain.PolicyVersion]:
        rows = self._session.scalars(
            select(PolicyVersionRow)
            .where(PolicyVersionRow.endpoint_id == self._endpoint_id(endpoint))
            .order_by(PolicyVersionRow.version)
        )
        return [_policy(r, endpoint) for r in rows]


class AuditRepository:
    def __init__(self, session: Session):
        self._session = session

    def record(self, endpoint: str, action: str, actor: str, reason: str = "", **detail) -> None:
        self._session.add(
            AuditRow(endpoint=endpoint, action=action, actor=actor, reason=reason, detail=detail, at=utcnow())
        )

    def list(self, endpoint: str, limit: int = 1000) -> list[domain.AuditEntry]:
        rows = self._session.scalars(
            select(AuditRow).where(AuditRow.endpoint == endpoint).order_by(AuditRow.id.desc()).limit(limit)
        )
        return [
            domain.AuditEntry(r.endpoint, r.action, r.actor, r.reason, dict(r.detail), aware(r.at)) for r in rows
        ]
