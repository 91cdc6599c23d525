"""mixprec.v1.FleetService: activate, roll back, look at the fleet and the audit log."""

from __future__ import annotations

import json
from typing import Awaitable, Callable

from google.protobuf.json_format import ParseDict

from controlplane.api import convert
from controlplane.api.edge import actor
from controlplane.api.errors import maps_domain_errors
from controlplane.api.idempotency import write_rpc
from controlplane.blocking import run_blocking
from controlplane.services.fleet import ActivationResult, FleetService
from controlplane.services.identity import WorkerIdentity
from controlplane.services.write_requests import RequestLog
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc


class FleetServicer(agent_pb2_grpc.FleetServiceServicer):
    def __init__(self, fleet: FleetService, changed: Callable[[str], Awaitable[int]],
                 requests: RequestLog | None = None, identity: WorkerIdentity | None = None,
                 sessions_ended: Callable[[], Awaitable[None]] | None = None):
        self._fleet = fleet
        self._identity = identity
        self._sessions_ended = sessions_ended  # every replica's session watch ends what is no longer held
        self._changed = changed  # pushes the endpoint's new target; returns workers it reaches here
        self._requests = requests

    async def _respond(self, result: ActivationResult) -> apb.ActivationResponse:
        reached = await self._changed(result.endpoint)  # counted by the push hub: no database read
        return apb.ActivationResponse(
            endpoint=result.endpoint,
            previous_version=result.previous_version,
            active_version=result.active_version,
            connected_workers=reached or 0,
        )

    @maps_domain_errors
    @write_rpc(apb.ActivationResponse)
    async def Activate(self, request: apb.ActivateRequest, context) -> apb.ActivationResponse:
        result = await run_blocking(
            self._fleet.activate, request.endpoint, request.version, actor(request.actor), request.reason
        )
        return await self._respond(result)

    @maps_domain_errors
    @write_rpc(apb.ActivationResponse)
    async def Rollback(self, request: apb.RollbackRequest, context) -> apb.ActivationResponse:
        result = await run_blocking(
            self._fleet.rollback, request.endpoint, request.reason, request.to_version, request.to_base,
            actor(request.actor),
        )
        return await self._respond(result)

    @maps_domain_errors
    @write_rpc(apb.TakeOverWorkerResponse)
    async def TakeOverWorker(self, request: apb.TakeOverWorkerRequest, context) -> apb.TakeOverWorkerResponse:
        ended, revoked = await run_blocking(self._identity.take_over, request.endpoint, request.worker_id,
                                            request.reason, actor())
        if self._sessions_ended is not None:
            await self._sessions_ended()
        return apb.TakeOverWorkerResponse(endpoint=request.endpoint, worker_id=request.worker_id, ended_stream=ended,
                                          revoked_tokens=revoked)

    @maps_domain_errors
    async def GetFleet(self, request: apb.GetFleetRequest, context) -> apb.GetFleetResponse:
        endpoint, workers = await run_blocking(self._fleet.get_fleet, request.endpoint)
        target = await run_blocking(self._fleet.target, request.endpoint)
        return apb.GetFleetResponse(
            endpoint=endpoint.name,
            active_version=endpoint.active_version,
            workers=[_worker_status(w, target.version_for(w.worker_id)) for w in workers],
        )

    @maps_domain_errors
    async def ListAudit(self, request: apb.ListAuditRequest, context) -> apb.ListAuditResponse:
        entries = await run_blocking(self._fleet.list_audit, request.endpoint, request.limit)
        return apb.ListAuditResponse(
            entries=[
                apb.AuditEntry(
                    endpoint=e.endpoint, action=e.action, actor=e.actor, reason=e.reason,
                    detail_json=json.dumps(e.detail, sort_keys=True), time=convert.timestamp(e.at),
                )
                for e in entries
            ]
        )


def _report(body: dict) -> apb.Report | None:
    return ParseDict(body, apb.Report(), ignore_unknown_fields=True) if body else None


def _worker_status(w, desired_version: int) -> apb.WorkerStatus:
    quality, serving = _report(w.last_quality), _report(w.last_serving)
    newest = max((b for b in (w.last_quality, w.last_serving) if b), key=lambda b: b.get("received_at", ""),
                 default=None)
    latest = _report(newest) if newest else None
    return apb.WorkerStatus(
        worker_id=w.worker_id,
        connected=w.connected,
        applied_version=w.applied_version,
        last_ack_version=w.last_ack_version,
        last_nack_version=w.last_nack_version,
        last_nack=w.last_nack_error,
        last_report=latest,
        last_quality=quality,
        last_serving=serving,
        last_seen=convert.timestamp(w.last_seen),
        hardware=ParseDict(w.hardware, apb.Hardware(), ignore_unknown_fields=True),
        inference_address=w.inference_address,
        desired_version=desired_version,
    )
