"""`mixprec webhook set|list|delete|test`: an endpoint's notifications (Slack-compatible webhooks)."""

from __future__ import annotations

from mixprec.cli import output
from mixprec.cli.common import (
    RPC_TIMEOUT_S,
    actor,
    add_request_id_option,
    channel,
    command,
    group,
    request_id,
    timestamp_text,
    to_dict,
)

# Kept in step with controlplane.services.notifications.EVENTS (the server names the valid ones).
EVENTS = ("rollout.start", "rollout.paused", "rollout.succeeded", "rollout.rolled_back", "rollout.aborted",
          "rollback", "worker.nack")


def register(sub) -> None:
    webhook = group(sub, "webhook", "notify a chat channel or any HTTP receiver about an endpoint's rollouts, "
                                    "rollbacks and NACKs")
    s = command(webhook, "set", "create or replace a webhook of an endpoint", _set,
                description="POST a Slack-compatible JSON message (text + attachment, and a `mixprec` object with "
                "the event) to URL on each chosen event; retried with backoff; every delivery is in `mixprec audit`.")
    s.add_argument("endpoint")
    s.add_argument("name", help="a lowercase DNS label, unique per endpoint (e.g. team-slack)")
    s.add_argument("--url", required=True, help="http(s) URL, e.g. a Slack incoming-webhook URL")
    s.add_argument("--events", default="", metavar="E1,E2",
                   help=f"events to send (default all): {', '.join(EVENTS)}")
    add_request_id_option(s)
    ls = command(webhook, "list", "an endpoint's webhooks with their last delivery", _list)
    ls.add_argument("endpoint")
    d = command(webhook, "delete", "delete a webhook", _delete)
    d.add_argument("endpoint")
    d.add_argument("name")
    add_request_id_option(d)
    t = command(webhook, "test", "send a test notification to one webhook", _test)
    t.add_argument("endpoint")
    t.add_argument("name")
    add_request_id_option(t)


def _stub(args):
    from mixprec.v1 import notify_pb2_grpc

    return notify_pb2_grpc.NotificationServiceStub(channel(args))


def _row(w) -> dict:
    last = w.last_delivery if w.HasField("last_delivery") else None
    return {
        "name": w.name, "url": w.url, "events": ",".join(w.events),
        "last": f"{last.event} {last.state} ({last.attempts} attempt(s)"
                f"{', HTTP %d' % last.status_code if last.status_code else ''})" if last else "-",
        "at": timestamp_text(last.finish_time if last.HasField("finish_time") else last.create_time) if last else "-",
        "error": (last.error if last else "") or "-",
    }


def _set(args) -> int:
    from mixprec.v1 import notify_pb2 as npb

    events = [e.strip() for e in args.events.split(",") if e.strip()]
    webhook = _stub(args).SetWebhook(npb.SetWebhookRequest(endpoint=args.endpoint, name=args.name, url=args.url,
                                                           events=events, actor=actor(args),
                                                           request_id=request_id(args)), timeout=RPC_TIMEOUT_S)
    output.emit(args, to_dict(webhook), [_row(webhook)], ["name", "url", "events"])
    return 0


def _list(args) -> int:
    from mixprec.v1 import notify_pb2 as npb

    reply = _stub(args).ListWebhooks(npb.ListWebhooksRequest(endpoint=args.endpoint), timeout=RPC_TIMEOUT_S)
    output.emit(args, to_dict(reply), [_row(w) for w in reply.webhooks])
    return 0


def _delete(args) -> int:
    from mixprec.v1 import notify_pb2 as npb

    _stub(args).DeleteWebhook(npb.DeleteWebhookRequest(endpoint=args.endpoint, name=args.name, actor=actor(args),
                                                       request_id=request_id(args)), timeout=RPC_TIMEOUT_S)
    print(f"deleted webhook {args.name} of {args.endpoint}")
    return 0


def _test(args) -> int:
    from mixprec.v1 import notify_pb2 as npb

    _stub(args).TestWebhook(npb.TestWebhookRequest(endpoint=args.endpoint, name=args.name, actor=actor(args),
                                                   request_id=request_id(args)), timeout=RPC_TIMEOUT_S)
    print(f"queued a test notification to {args.name}; see `mixprec webhook list {args.endpoint}`")
    return 0
