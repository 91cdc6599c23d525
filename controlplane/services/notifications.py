"""Per-endpoint webhooks: configuration, and the outbox that turns audit entries into deliveries.

The audit log is the single record of what happened; a webhook subscribes to some of its actions.
Each webhook keeps a cursor into the audit log that replicas advance by compare-and-swap, so every
matching entry becomes exactly one delivery row; a replica claims a row, sends it, and settles it,
and the settlement is itself an audit entry (`notify.delivered` / `notify.failed`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Callable, Sequence
from urllib.parse import urlsplit

from controlplane import domain
from controlplane.services.checks import check_name, check_text
from controlplane.services.webhook_targets import WebhookTargets
from controlplane.storage.repositories import utcnow
from controlplane.storage.unit_of_work import UnitOfWork
from controlplane.storage.webhook_repository import webhook_missing
from mixprec.errors import FieldError, InvalidArgument

# audit action -> (title, Slack attachment colour)
EVENTS: dict[str, tuple[str, str]] = {
    "rollout.start": ("Rollout started", "#439FE0"),
    "rollout.paused": ("Rollout paused", "warning"),
    "rollout.succeeded": ("Rollout succeeded", "good"),
    "rollout.rolled_back": ("Rollout rolled back", "danger"),
    "rollout.aborted": ("Rollout aborted", "warning"),
    "rollback": ("Manual rollback", "danger"),
    "worker.nack": ("A worker refused a policy (NACK)", "danger"),
}
TEST_EVENT = "webhook.test"  # `mixprec webhook test`: goes to the named webhook only
MAX_URL = 2000
MAX_WEBHOOKS = 20


def check_url(url: str) -> None:
    parts = urlsplit(url) if len(url) <= MAX_URL else None
    if parts is None:
        raise InvalidArgument(FieldError("url", f"is {len(url)} characters long; the limit is {MAX_URL}"))
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() or c == "\0" for c in url):
        raise InvalidArgument(FieldError("url", "must be an http:// or https:// URL with a host and no spaces"))


def masked(url: str) -> str:
    """Webhook URLs carry their secret in the path (Slack's do): show only where they go."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…" if parts.path.strip("/") or parts.query else url


def slack_payload(entry: domain.AuditEntry) -> dict:
    """A Slack-compatible message (text + attachment); the `mixprec` object is for other receivers."""
    title, color = EVENTS.get(entry.action, ("Test notification", "#439FE0"))
    detail = {k: v for k, v in entry.detail.items() if isinstance(v, (str, int, float, bool))}
    fields = [{"title": "endpoint", "value": entry.endpoint, "short": True},
              {"title": "by", "value": entry.actor or "-", "short": True}]
    fields += [{"title": key, "value": str(value), "short": True} for key, value in sorted(detail.items())]
    text = f"[mixprec] {title} on {entry.endpoint}" + (f": {entry.reason}" if entry.reason else "")
    return {
        "text": text[:3000],
        "attachments": [{"color": color, "title": title, "text": entry.reason[:3000], "fields": fields,
                         "ts": int(entry.at.timestamp())}],
        "mixprec": {"event": entry.action, "endpoint": entry.endpoint, "actor": entry.actor, "reason": entry.reason,
                    "detail": entry.detail, "at": entry.at.isoformat()},
    }


def wanted(webhook: domain.Webhook, entry: domain.AuditEntry) -> bool:
    if entry.action == TEST_EVENT:
        return entry.detail.get("webhook") == webhook.name
    return entry.action in webhook.events


class NotificationService:
    def __init__(self, uow: Callable[[], UnitOfWork], targets: WebhookTargets | None = None):
        self._uow = uow
        self.targets = targets or WebhookTargets()  # where webhooks may point (not loopback or private)

    # --- configuration ------------------------------------------------------------------------

    def set_webhook(self, endpoint: str, name: str, url: str, events: Sequence[str], actor: str = "") -> domain.Webhook:
        check_name(endpoint, "endpoint")
        check_name(name, "name")
        check_url(url)
        self.targets.check_url(url)
        check_text(actor=actor)
        unknown = sorted(set(events) - set(EVENTS))
        if unknown:
            raise InvalidArgument(FieldError("events", f"unknown event(s) {', '.join(unknown)}; choose from "
                                                       f"{', '.join(EVENTS)}"))
        chosen = tuple(e for e in EVENTS if e in set(events)) or tuple(EVENTS)
        with self._uow() as uow:
            uow.endpoints.get(endpoint, for_update=True)
            existing = {w.name for w in uow.webhooks.list(endpoint)}
            if name not in existing and len(existing) >= MAX_WEBHOOKS:
                raise InvalidArgument(FieldError("name", f"endpoint {endpoint!r} has {len(existing)} webhooks; "
                                                         f"the limit is {MAX_WEBHOOKS}"))
            webhook = uow.webhooks.put(endpoint, name, url, chosen, actor)
            uow.audit.record(endpoint, "webhook.set", actor, "", webhook=name, events=list(chosen),
                             target=masked(url))
            uow.commit()
        return webhook

    def delete_webhook(self, endpoint: str, name: str, actor: str = "") -> None:
        check_name(endpoint, "endpoint")
        check_name(name, "name")
        with self._uow() as uow:
            uow.webhooks.remove(endpoint, name)
            uow.audit.record(endpoint, "webhook.delete", actor, "", webhook=name)
            uow.commit()

    def list_webhooks(self, endpoint: str) -> list[tuple[domain.Webhook, domain.Delivery | None]]:
        check_name(endpoint, "endpoint")
        with self._uow() as uow:
            uow.endpoints.get(endpoint)
            latest = uow.deliveries.latest(endpoint)
            return [(w, latest.get(w.name)) for w in uow.webhooks.list(endpoint)]

    def test_webhook(self, endpoint: str, name: str, actor: str = "") -> None:
        check_name(endpoint, "endpoint")
        check_name(name, "name")
        with self._uow() as uow:
            if name not in {w.name for w in uow.webhooks.list(endpoint)}:
                raise webhook_missing(endpoint, name)
            uow.audit.record(endpoint, TEST_EVENT, actor, "a test notification from mixprec", webhook=name)
            uow.commit()

    # --- the outbox ---------------------------------------------------------------------------

    def queue(self) -> int:
        """Turns new audit entries into deliveries, for every webhook; returns how many were queued."""
        with self._uow() as uow:
            webhooks = uow.webhooks.all()
        queued = 0
        for webhook in webhooks:
            with self._uow() as uow:
                entries = uow.webhooks.audit_after(webhook.endpoint, webhook.last_audit_id)
                if not entries or not uow.webhooks.advance(webhook, entries[-1][0]):
                    continue  # nothing new, or another replica queued these
                for audit_id, entry in entries:
                    if wanted(webhook, entry):
                        uow.deliveries.add(webhook, audit_id, entry.action, slack_payload(entry))
                        queued += 1
                uow.commit()
        return queued

    def claim(self, replica: str, stale_after: timedelta) -> list[domain.Delivery]:
        with self._uow() as uow:
            claimed = uow.deliveries.claim(replica, utcnow() - stale_after)
            uow.commit()
        return claimed

    def settle(self, delivery: domain.Delivery, delivered: bool, attempts: int, status_code: int, error: str) -> None:
        with self._uow() as uow:
            uow.deliveries.settle(delivery.id, delivered, attempts, status_code, error)
            uow.audit.record(delivery.endpoint, "notify.delivered" if delivered else "notify.failed", "notifier",
                             error[:2000], webhook=delivery.webhook, event=delivery.event, attempts=attempts,
                             status_code=status_code, audit_id=delivery.audit_id)
            uow.commit()
