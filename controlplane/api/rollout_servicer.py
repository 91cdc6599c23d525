"""mixprec.v1.RolloutService: proto in, rollout service call in a worker thread, proto out."""

from __future__ import annotations

from typing import Awaitable, Callable

from controlplane import domain
from controlplane.api import convert
from controlplane.api.edge import actor
from controlplane.api.errors import maps_domain_errors
from controlplane.api.idempotency import write_rpc
from controlplane.blocking import run_blocking
from controlplane.services.rollouts import RolloutService
from controlplane.services.write_requests import RequestLog
from mixprec.v1 import rollout_pb2 as rpb
from mixprec.v1 import rollout_pb2_grpc


def step_from_proto(step: rpb.RolloutStep) -> domain.RolloutStep:
    return domain.RolloutStep(workers=step.workers, percent=step.percent)


def guardrails_from_proto(g: rpb.Guardrails) -> domain.Guardrails:
    return domain.Guardrails(
        max_drop=dict(g.max_drop), min_throughput_ratio=g.min_throughput_ratio, reports_per_step=g.reports_per_step,
        bake_seconds=g.bake_seconds, max_failed_checks=g.max_failed_checks,
        step_timeout_seconds=g.step_timeout_seconds, max_rise=dict(g.max_rise),
    )


def rollout_to_proto(r: domain.Rollout) -> rpb.Rollout:
    g = r.guardrails
    return rpb.Rollout(
        id=r.id, endpoint=r.endpoint, from_version=r.from_version, to_version=r.to_version,
        steps=[rpb.RolloutStep(workers=s.workers) if s.workers else rpb.RolloutStep(percent=s.percent)
               for s in r.steps],
        guardrails=rpb.Guardrails(
            max_drop=g.max_drop, min_throughput_ratio=g.min_throughput_ratio, reports_per_step=g.reports_per_step,
            bake_seconds=g.bake_seconds, max_failed_checks=g.max_failed_checks,
            step_timeout_seconds=g.step_timeout_seconds, max_rise=g.max_rise,
        ),
        state=rpb.RolloutState.Value(r.state), current_step=r.current_step, failed_checks=r.failed_checks,
        message=r.message, new_version_workers=list(r.new_workers),
        last_checks=[rpb.GuardrailCheck(**c) for c in r.last_checks], actor=r.actor,
        create_time=convert.timestamp(r.created_at), step_start_time=convert.timestamp(r.step_started_at),
        update_time=convert.timestamp(r.updated_at),
    )


class RolloutServicer(rollout_pb2_grpc.RolloutServiceServicer):
    def __init__(self, rollouts: RolloutService, changed: Callable[[str], Awaitable[object]],
                 requests: RequestLog | None = None):
        self._rollouts = rollouts
        self._changed = changed
        self._requests = requests

    async def _changed_and(self, rollout: domain.Rollout) -> rpb.Rollout:
        await self._changed(rollout.endpoint)
        return rollout_to_proto(rollout)

    @maps_domain_errors
    @write_rpc(rpb.Rollout)
    async def StartRollout(self, request: rpb.StartRolloutRequest, context) -> rpb.Rollout:
        rollout = await run_blocking(
            self._rollouts.start, request.endpoint, request.version, [step_from_proto(s) for s in request.steps],
            guardrails_from_proto(request.guardrails), actor(request.actor),
        )
        return await self._changed_and(rollout)

    @maps_domain_errors
    async def GetRollout(self, request: rpb.GetRolloutRequest, context) -> rpb.Rollout:
        return rollout_to_proto(await run_blocking(self._rollouts.get, request.endpoint, request.id))

    @maps_domain_errors
    async def ListRollouts(self, request: rpb.ListRolloutsRequest, context) -> rpb.ListRolloutsResponse:
        rollouts = await run_blocking(self._rollouts.list, request.endpoint)
        return rpb.ListRolloutsResponse(rollouts=[rollout_to_proto(r) for r in rollouts])

    @maps_domain_errors
    @write_rpc(rpb.Rollout)
    async def PauseRollout(self, request: rpb.RolloutActionRequest, context) -> rpb.Rollout:
        rollout = await run_blocking(self._rollouts.pause, request.endpoint, actor(request.actor), request.reason)
        return await self._changed_and(rollout)

    @maps_domain_errors
    @write_rpc(rpb.Rollout)
    async def ResumeRollout(self, request: rpb.RolloutActionRequest, context) -> rpb.Rollout:
        rollout = await run_blocking(self._rollouts.resume, request.endpoint, actor(request.actor), request.reason)
        return await self._changed_and(rollout)

    @maps_domain_errors
    @write_rpc(rpb.Rollout)
    async def AbortRollout(self, request: rpb.RolloutActionRequest, context) -> rpb.Rollout:
        rollout = await run_blocking(self._rollouts.abort, request.endpoint, actor(request.actor), request.reason)
        return await self._changed_and(rollout)

    @maps_domain_errors
    @write_rpc(rpb.Rollout)
    async def PromoteRollout(self, request: rpb.RolloutActionRequest, context) -> rpb.Rollout:
        rollout = await run_blocking(self._rollouts.promote, request.endpoint, actor(request.actor), request.reason)
        return await self._changed_and(rollout)
