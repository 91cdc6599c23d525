"""`mixprec activate`, `mixprec rollback`, `mixprec fleet`, `mixprec audit`."""

from __future__ import annotations

import json

from mixprec.cli import output
from mixprec.cli.common import (
    RPC_TIMEOUT_S,
    actor,
    add_request_id_option,
    channel,
    command,
    count,
    request_id,
    timestamp_text,
    to_dict,
)
from mixprec.hardware import hardware_text
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc


def register(sub) -> None:
    a = command(sub, "activate", "make a policy version active on every worker of an endpoint now", _activate)
    a.add_argument("endpoint")
    a.add_argument("version", type=count)
    a.add_argument("--reason", default="", help="why, for the audit log")
    add_request_id_option(a)

    r = command(sub, "rollback", "return an endpoint to its last known-good version everywhere, in one call",
                _rollback,
                description="Return an endpoint to its last known-good version (the latest earlier active version "
                "that was not rolled back), to a named version with --to, or to all-base precision with --to-base.")
    r.add_argument("endpoint")
    r.add_argument("--reason", required=True, help="why (kept in the audit log)")
    target = r.add_mutually_exclusive_group()
    target.add_argument("--to", type=count, default=0, metavar="VERSION", help="roll back to this version")
    target.add_argument("--to-base", action="store_true", help="every layer at the endpoint's base precision")
    add_request_id_option(r)

    f = command(sub, "fleet", "show every worker of an endpoint: connected, applied version, last ACK/NACK, reports",
                _fleet)
    f.add_argument("endpoint")

    t = command(sub, "takeover", "admin: end the stream holding a worker id, wherever it is, and revoke the tokens "
                "bound to it (audited)", _takeover,
                description="Give a worker id to another worker: the live stream holding it is closed (ABORTED) "
                "on whichever replica has it, and the tokens bound to that id are revoked, so its holder cannot "
                "come back with them. Then mint the new worker its token (mixprec token create ... --worker-id), "
                "or let a bootstrap token issue one.")
    t.add_argument("endpoint")
    t.add_argument("worker_id")
    t.add_argument("--reason", required=True, help="why (kept in the audit log)")
    add_request_id_option(t)

    u = command(sub, "audit", "show who changed what on an endpoint, newest first", _audit)
    u.add_argument("endpoint")
    u.add_argument("--limit", type=count, default=100, help="how many entries, newest first (default 100)")


# The sharpest signals on a robust model; `--output json` has every metric.
QUALITY_COLUMNS = ("cosine_to_base", "mrr", "top10_agreement", "kl_divergence", "top1_agreement", "perplexity")


def fleet_stub(args) -> agent_pb2_grpc.FleetServiceStub:
    return agent_pb2_grpc.FleetServiceStub(channel(args))


def _print_activation(args, response: apb.ActivationResponse, verb: str) -> None:
    if args.output == "json":
        output.as_json(to_dict(response))
        return
    print(f"{response.endpoint}: {verb} v{response.previous_version} -> v{response.active_version}; "
          f"pushing to {response.connected_workers} connected worker(s)")


def _activate(args) -> int:
    response = fleet_stub(args).Activate(
        apb.ActivateRequest(endpoint=args.endpoint, version=args.version, actor=actor(args), reason=args.reason,
                            request_id=request_id(args)),
        timeout=RPC_TIMEOUT_S,
    )
    _print_activation(args, response, "activated")
    return 0


def _rollback(args) -> int:
    response = fleet_stub(args).Rollback(
        apb.RollbackRequest(endpoint=args.endpoint, reason=args.reason, to_version=args.to, to_base=args.to_base,
                            actor=actor(args), request_id=request_id(args)),
        timeout=RPC_TIMEOUT_S,
    )
    _print_activation(args, response, "rolled back")
    return 0


def _quality_text(report: apb.Report) -> str:
    if not report.deltas:
        return "-"
    shown = " ".join(f"{k}={v:+.4f}" for k, v in sorted(report.deltas.items()) if k in QUALITY_COLUMNS)
    return f"v{report.version}: {shown}"


def _tokens_per_second(report: apb.Report) -> str:
    """Decoders report prefill and decode tokens per second; embedders neither."""
    rates = [report.metrics.get(f"{phase}_tokens_per_second") for phase in ("prefill", "decode")]
    return "-" if rates == [None, None] else "/".join("-" if r is None else f"{r:.1f}" for r in rates)


def _takeover(args) -> int:
    response = fleet_stub(args).TakeOverWorker(
        apb.TakeOverWorkerRequest(endpoint=args.endpoint, worker_id=args.worker_id, reason=args.reason,
                                  request_id=request_id(args)),
        timeout=RPC_TIMEOUT_S,
    )
    if args.output == "json":
        output.as_json(to_dict(response))
        return 0
    ended = "its live stream is being closed" if response.ended_stream else "no live stream held it"
    revoked = ", ".join(response.revoked_tokens) or "none"
    print(f"took over worker {response.worker_id!r} of {response.endpoint}: {ended}; revoked tokens: {revoked}")
    return 0


def worker_rows(response: apb.GetFleetResponse) -> list[dict]:
    return [
        {
            "worker": w.worker_id,
            "connected": "yes" if w.connected else "no",
            "applied": f"v{w.applied_version}",
            "want": f"v{w.desired_version}",
            "last nack": f"v{w.last_nack_version}: {w.last_nack[:60]}" if w.last_nack else "-",
            "quality (delta vs base)": _quality_text(w.last_quality),
            "req/s": f"{w.last_serving.throughput:.1f}" if w.HasField("last_serving") else "-",
            "p50/p99 ms": (f"{w.last_serving.latency_p50_ms:.1f}/{w.last_serving.latency_p99_ms:.1f}"
                           if w.HasField("last_serving") else "-"),
            "tok/s prefill/decode": _tokens_per_second(w.last_serving) if w.HasField("last_serving") else "-",
            "hardware": hardware_text(w.hardware.device, w.hardware.dtype, w.hardware.kernel, w.hardware.fp8_kernel),
            "last seen": timestamp_text(w.last_seen),
        }
        for w in response.workers
    ]


def _fleet(args) -> int:
    response = fleet_stub(args).GetFleet(apb.GetFleetRequest(endpoint=args.endpoint), timeout=RPC_TIMEOUT_S)
    if args.output == "json":
        output.as_json([
            {
                "worker_id": w.worker_id,
                "connected": w.connected,
                "applied_version": w.applied_version,
                "desired_version": w.desired_version,
                "last_ack_version": w.last_ack_version,
                "last_nack": ({"version": w.last_nack_version, "error": w.last_nack} if w.last_nack else None),
                "last_quality": to_dict(w.last_quality) if w.HasField("last_quality") else None,
                "last_serving": to_dict(w.last_serving) if w.HasField("last_serving") else None,
                "hardware": to_dict(w.hardware),
                "inference_address": w.inference_address,
                "last_seen": timestamp_text(w.last_seen),
            }
            for w in response.workers
        ])
        return 0
    print(f"endpoint {response.endpoint}: active v{response.active_version}, {len(response.workers)} worker(s)")
    output.table(worker_rows(response))
    return 0


def _audit(args) -> int:
    response = fleet_stub(args).ListAudit(apb.ListAuditRequest(endpoint=args.endpoint, limit=args.limit),
                                          timeout=RPC_TIMEOUT_S)
    rows = [
        {"time": timestamp_text(e.time), "action": e.action, "actor": e.actor, "reason": e.reason,
         "detail": e.detail_json}
        for e in response.entries
    ]
    output.emit(args, [dict(r, detail=json.loads(r["detail"])) for r in rows], rows=rows)
    return 0


