"""Webhooks of an endpoint and the outbox of their deliveries."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, or_, select, update

from controlplane import domain
from controlplane.storage.repositories import EndpointScoped, aware, utcnow
from controlplane.storage.tables import AuditRow, EndpointRow, WebhookDeliveryRow, WebhookRow
from mixprec.errors import NotFound


def webhook_missing(endpoint: str, name: str) -> NotFound:
    return NotFound(f"endpoint {endpoint!r} has no webhook {name!r} (see `mixprec webhook list {endpoint}`)")


def _webhook(row: WebhookRow, endpoint: str) -> domain.Webhook:
    return domain.Webhook(endpoint, row.name, row.url, tuple(row.events), row.created_by, aware(row.created_at),
                          row.id, row.last_audit_id)


def _delivery(row: WebhookDeliveryRow, endpoint: str, webhook: str, url: str) -> domain.Delivery:
    return domain.Delivery(
        id=row.id, endpoint=endpoint, webhook=webhook, url=url, audit_id=row.audit_id, event=row.event,
        payload=dict(row.payload), state=row.state, attempts=row.attempts, status_code=row.status_code,
        error=row.error, created_at=aware(row.created_at),
        finished_at=aware(row.finished_at) if row.finished_at else None,
    )


class WebhookRepository(EndpointScoped):
    def put(self, endpoint: str, name: str, url: str, events: tuple[str, ...], actor: str) -> domain.Webhook:
        """Creates or replaces the webhook `name`; a new one starts after the newest audit entry."""
        endpoint_id = self._endpoint_id(endpoint)
        row = self._session.scalars(
            select(WebhookRow).where(WebhookRow.endpoint_id == endpoint_id, WebhookRow.name == name)
        ).one_or_none()
        if row is None:
            newest = self._session.scalar(select(func.max(AuditRow.id))) or 0
            row = WebhookRow(endpoint_id=endpoint_id, name=name, created_at=utcnow(), last_audit_id=newest)
            self._session.add(row)
        row.url, row.events, row.created_by = url, list(events), actor
        self._session.flush()
        return _webhook(row, endpoint)

    def remove(self, endpoint: str, name: str) -> None:
        endpoint_id = self._endpoint_id(endpoint)
        row = self._session.scalars(
            select(WebhookRow).where(WebhookRow.endpoint_id == endpoint_id, WebhookRow.name == name)
        ).one_or_none()
        if row is None:
            raise webhook_missing(endpoint, name)
        self._session.execute(delete(WebhookDeliveryRow).where(WebhookDeliveryRow.webhook_id == row.id))
        self._session.delete(row)

    def list(self, endpoint: str) -> list[domain.Webhook]:
        rows = self._session.scalars(
            select(WebhookRow).where(WebhookRow.endpoint_id == self._endpoint_id(endpoint)).order_by(WebhookRow.name)
        )
        return [_webhook(r, endpoint) for r in rows]

    def all(self) -> list[domain.Webhook]:
        rows = self._session.execute(
            select(WebhookRow, EndpointRow.name).join(EndpointRow, EndpointRow.id == WebhookRow.endpoint_id)
            .order_by(WebhookRow.id)
        )
        return [_webhook(row, name) for row, name in rows]

    def advance(self, webhook: domain.Webhook, to_audit_id: int) -> bool:
        """Compare-and-swap of the webhook's audit cursor: False when another replica moved it first."""
        result = self._session.execute(
            update(WebhookRow).where(WebhookRow.id == webhook.id, WebhookRow.last_audit_id == webhook.last_audit_id)
            .values(last_audit_id=to_audit_id)
        )
        return result.rowcount == 1

    def audit_after(self, endpoint: str, after_id: int, limit: int = 500) -> list[tuple[int, domain.AuditEntry]]:
        rows = self._session.scalars(
            select(AuditRow).where(AuditRow.endpoint == endpoint, AuditRow.id > after_id)
            .order_by(AuditRow.id).limit(limit)
        )
        return [(r.id, domain.AuditEntry(r.endpoint, r.action, r.actor, r.reason, dict(r.detail), aware(r.at)))
                for r in rows]


class DeliveryRepository(EndpointScoped):
    def add(self, webhook: domain.Webhook, audit_id: int, event: str, payload: dict) -> None:
        self._session.add(WebhookDeliveryRow(
            endpoint_id=self._endpoint_id(webhook.endpoint), webhook_id=webhook.id, audit_id=audit_id, event=event,
            payload=payload, state="pending", created_at=utcnow(),
        ))

    def claim(self, replica: str, stale_before: datetime, limit: int = 50) -> list[domain.Delivery]:
        """Pending deliveries (and ones a vanished replica left half-sent), each claimed by one replica."""
        candidates = self._session.execute(
            select(WebhookDeliveryRow, WebhookRow.name, WebhookRow.url, EndpointRow.name)
            .join(WebhookRow, WebhookRow.id == WebhookDeliveryRow.webhook_id)
            .join(EndpointRow, EndpointRow.id == WebhookDeliveryRow.endpoint_id)
            .where(or_(WebhookDeliveryRow.state == "pending",
                       (WebhookDeliveryRow.state == "sending") & (WebhookDeliveryRow.claimed_at < stale_before)))
            .order_by(WebhookDeliveryRow.id).limit(limit)
        ).all()
        claimed = []
        now = utcnow()
        for row, webhook, url, endpoint in candidates:
            won = self._session.execute(
                update(WebhookDeliveryRow)
                .where(WebhookDeliveryRow.id == row.id, WebhookDeliveryRow.state == row.state,
                       WebhookDeliveryRow.claimed_by == row.claimed_by)
                .values(state="sending", claimed_by=replica, claimed_at=now)
            ).rowcount == 1
            if won:
                claimed.append(_delivery(row, endpoint, webhook, url))
        return claimed

    def settle(self, delivery_id: int, delivered: bool, attempts: int, status_code: int, error: str) -> None:
        self._session.execute(
            update(WebhookDeliveryRow).where(WebhookDeliveryRow.id == delivery_id).values(
                state="delivered" if delivered else "failed", attempts=attempts, status_code=status_code,
                error=error[:2000], finished_at=utcnow(),
            )
        )

    def latest(self, endpoint: str) -> dict[str, domain.Delivery]:
        """The newest delivery of each webhook of the endpoint, by webhook name."""
        newest = (select(func.max(WebhookDeliveryRow.id))
                  .where(WebhookDeliveryRow.endpoint_id == self._endpoint_id(endpoint))
                  .group_by(WebhookDeliveryRow.webhook_id))
        rows = self._session.execute(
            select(WebhookDeliveryRow, WebhookRow.name, WebhookRow.url)
            .join(WebhookRow, WebhookRow.id == WebhookDeliveryRow.webhook_id)
            .where(WebhookDeliveryRow.id.in_(newest))
        )
        return {name: _delivery(row, endpoint, name, url) for row, name, url in rows}
