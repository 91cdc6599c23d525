"""mixprec.v1.NotificationService: proto in, notification service call in a worker thread, proto out."""

from __future__ import annotations

from controlplane import domain
from controlplane.api import convert
from controlplane.api.edge import actor
from controlplane.api.errors import maps_domain_errors
from controlplane.api.idempotency import write_rpc
from controlplane.blocking import run_blocking
from controlplane.services.notifications import NotificationService, masked
from controlplane.services.write_requests import RequestLog
from mixprec.v1 import notify_pb2 as npb
from mixprec.v1 import notify_pb2_grpc


def webhook_to_proto(webhook: domain.Webhook, last: domain.Delivery | None = None) -> npb.Webhook:
    message = npb.Webhook(endpoint=webhook.endpoint, name=webhook.name, url=masked(webhook.url),
                          events=list(webhook.events), created_by=webhook.created_by,
                          create_time=convert.timestamp(webhook.created_at))
    if last is not None:
        message.last_delivery.CopyFrom(npb.WebhookDelivery(
            event=last.event, state=last.state, attempts=last.attempts, status_code=last.status_code, error=last.error,
            create_time=convert.timestamp(last.created_at)))
        if last.finished_at:
            message.last_delivery.finish_time.CopyFrom(convert.timestamp(last.finished_at))
    return message


class NotificationServicer(notify_pb2_grpc.NotificationServiceServicer):
    def __init__(self, notifications: NotificationService, requests: RequestLog | None = None):
        self._notifications = notifications
        self._requests = requests

    @maps_domain_errors
    @write_rpc(npb.Webhook)
    async def SetWebhook(self, request: npb.SetWebhookRequest, context) -> npb.Webhook:
        webhook = await run_blocking(self._notifications.set_webhook, request.endpoint, request.name, request.url,
                                     list(request.events), actor(request.actor))
        return webhook_to_proto(webhook)

    @maps_domain_errors
    @write_rpc(npb.DeleteWebhookResponse)
    async def DeleteWebhook(self, request: npb.DeleteWebhookRequest, context) -> npb.DeleteWebhookResponse:
        await run_blocking(self._notifications.delete_webhook, request.endpoint, request.name, actor(request.actor))
        return npb.DeleteWebhookResponse()

    @maps_domain_errors
    async def ListWebhooks(self, request: npb.ListWebhooksRequest, context) -> npb.ListWebhooksResponse:
        webhooks = await run_blocking(self._notifications.list_webhooks, request.endpoint)
        return npb.ListWebhooksResponse(webhooks=[webhook_to_proto(w, last) for w, last in webhooks])

    @maps_domain_errors
    @write_rpc(npb.TestWebhookResponse)
    async def TestWebhook(self, request: npb.TestWebhookRequest, context) -> npb.TestWebhookResponse:
        await run_blocking(self._notifications.test_webhook, request.endpoint, request.name, actor(request.actor))
        return npb.TestWebhookResponse()
