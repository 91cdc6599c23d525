"""Tokens table: lookups by hash, creation, listing and revocation (by name, or of one worker id)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controlplane import domain
from controlplane.storage.repositories import aware
from controlplane.storage.tables import TokenRow
from mixprec.errors import AlreadyExists, NotFound


def _token(row: TokenRow) -> domain.TokenInfo:
    return domain.TokenInfo(
        name=row.name, role=row.role, endpoint=row.endpoint, created_by=row.created_by,
        created_at=aware(row.created_at),
        expires_at=aware(row.expires_at) if row.expires_at else None,
        revoked_at=aware(row.revoked_at) if row.revoked_at else None,
        worker_id=row.worker_id, bootstrap=bool(row.bootstrap), id=row.id,
    )


class TokenRepository:
    def __init__(self, session: Session):
        self._session = session

    def add(self, info: domain.TokenInfo, token_hash: str) -> domain.TokenInfo:
        row = TokenRow(
            name=info.name, token_hash=token_hash, role=info.role, endpoint=info.endpoint,
            created_by=info.created_by, created_at=info.created_at, expires_at=info.expires_at, revoked_at=None,
            worker_id=info.worker_id, bootstrap=info.bootstrap,
        )
        if info.worker_id is not None and self.live_for_worker(info.endpoint or "", info.worker_id):
            raise AlreadyExists(f"worker id {info.worker_id!r} of endpoint {info.endpoint!r} has a live token; "
                                "revoke it first (mixprec takeover does)")
        self._session.add(row)
        try:
            self._session.flush()
        except IntegrityError:
            raise AlreadyExists(f"a token named {info.name!r} exists (or one for worker id {info.worker_id!r}); "
                                "revoke it first or pick another name") from None
        return _token(row)

    def live_for_worker(self, endpoint: str, worker_id: str) -> list[domain.TokenInfo]:
        """The live token bound to this worker id (at most one: a unique index says so)."""
        rows = self._session.scalars(select(TokenRow).where(
            TokenRow.endpoint == endpoint, TokenRow.worker_id == worker_id, TokenRow.revoked_at.is_(None)))
        return [_token(r) for r in rows]

    def revoke_worker(self, endpoint: str, worker_id: str, at: datetime) -> list[domain.TokenInfo]:
        rows = list(self._session.scalars(select(TokenRow).where(
            TokenRow.endpoint == endpoint, TokenRow.worker_id == worker_id, TokenRow.revoked_at.is_(None),
        ).with_for_update()))
        for row in rows:
            row.revoked_at = at
        return [_token(r) for r in rows]

    def ended(self, token_ids: list[int], now: datetime) -> set[int]:
        """Which of these tokens are revoked or expired by `now`."""
        query = select(TokenRow.id).where(TokenRow.id.in_(token_ids), or_(
            TokenRow.revoked_at.is_not(None), TokenRow.expires_at <= now))
        return set(self._session.scalars(query))

    def by_hash(self, token_hash: str) -> domain.TokenInfo | None:
        row = self._session.scalars(select(TokenRow).where(TokenRow.token_hash == token_hash)).one_or_none()
        return _token(row) if row else None

    def list(self, include_revoked: bool = False) -> list[domain.TokenInfo]:
        query = select(TokenRow).order_by(TokenRow.name, TokenRow.id)
        if not include_revoked:
            query = query.where(TokenRow.revoked_at.is_(None))
        return [_token(r) for r in self._session.scalars(query)]

    def revoke(self, name: str, at: datetime) -> domain.TokenInfo:
        row = self._session.scalars(
            select(TokenRow).where(TokenRow.name == name, TokenRow.revoked_at.is_(None)).with_for_update()
        ).one_or_none()
        if row is None:
            raise NotFound(f"no token named {name!r} (see mixprec token list)")
        row.revoked_at = at
        return _token(row)
