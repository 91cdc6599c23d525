"""mixprec.v1.PolicyService: proto in, service call in a worker thread, proto out."""

from __future__ import annotations

from typing import Awaitable, Callable

from controlplane.api import convert
from controlplane.api.costs import ExpensiveReads
from controlplane.api.edge import actor, current_principal
from controlplane.api.errors import maps_domain_errors
from controlplane.api.idempotency import write_rpc
from controlplane.blocking import run_blocking
from controlplane.services.policies import PolicyService
from controlplane.services.write_requests import RequestLog
from mixprec.v1 import policy_pb2 as pb
from mixprec.v1 import policy_pb2_grpc


async def _nothing(endpoint: str) -> None:
    return None


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, service: PolicyService, changed: Callable[[str], Awaitable[None]] | None = None,
                 requests: RequestLog | None = None, resolutions: ExpensiveReads | None = None):
        self._service = service
        self._resolutions = resolutions or ExpensiveReads()  # reads that resolve rules over a catalog
        self._changed = changed or _nothing  # tells the agent streams of a deleted endpoint
        self._requests = requests

    @maps_domain_errors
    @write_rpc(pb.Endpoint)
    async def CreateEndpoint(self, request: pb.CreateEndpointRequest, context) -> pb.Endpoint:
        endpoint = await run_blocking(
            self._service.create_endpoint,
            request.name,
            list(request.layers),
            request.base_precision,
            request.model,
            actor(request.actor),
        )
        return convert.endpoint_to_proto(endpoint)

    @maps_domain_errors
    @write_rpc(pb.DeleteEndpointResponse)
    async def DeleteEndpoint(self, request: pb.DeleteEndpointRequest, context) -> pb.DeleteEndpointResponse:
        versions = await run_blocking(self._service.delete_endpoint, request.name, request.reason,
                                      actor(request.actor))
        await self._changed(request.name)
        return pb.DeleteEndpointResponse(name=request.name, policy_versions=versions)

    @maps_domain_errors
    async def GetEndpoint(self, request: pb.GetEndpointRequest, context) -> pb.Endpoint:
        return convert.endpoint_to_proto(await run_blocking(self._service.get_endpoint, request.name))

    @maps_domain_errors
    async def ListEndpoints(self, request: pb.ListEndpointsRequest, context) -> pb.ListEndpointsResponse:
        caller = current_principal()
        endpoints = [e for e in await run_blocking(self._service.list_endpoints) if caller.may_see(e.name)]
        return pb.ListEndpointsResponse(endpoints=[convert.endpoint_to_proto(e, with_layers=False) for e in endpoints])

    @maps_domain_errors
    @write_rpc(pb.PolicyVersion)
    async def CreatePolicy(self, request: pb.CreatePolicyRequest, context) -> pb.PolicyVersion:
        created = await run_blocking(
            self._service.create_policy,
            request.endpoint,
            request.parent_version,
            convert.spec_from_proto(request.rules, request.kv_cache),
            actor(request.author),
            request.message,
            request.artifact_json,
        )
        return convert.policy_to_proto(created)

    async def _resolving(self, context, fn, *args):
        return await self._resolutions.run(current_principal().name, context.time_remaining(), fn, *args)

    @maps_domain_errors
    async def GetPolicy(self, request: pb.GetPolicyRequest, context) -> pb.PolicyVersion:
        if not request.resolved:
            policy, _ = await run_blocking(self._service.get_policy, request.endpoint, request.version)
            return convert.policy_to_proto(policy, None, with_artifact=request.artifact)
        policy, resolved = await self._resolving(context, self._service.get_resolved_policy, request.endpoint,
                                                 request.version)
        return convert.policy_to_proto(policy, resolved, with_artifact=request.artifact)

    @maps_domain_errors
    async def ListPolicies(self, request: pb.ListPoliciesRequest, context) -> pb.ListPoliciesResponse:
        versions = await run_blocking(self._service.list_policies, request.endpoint)
        return pb.ListPoliciesResponse(versions=[convert.policy_to_proto(v) for v in versions])

    @maps_domain_errors
    async def DiffPolicies(self, request: pb.DiffPoliciesRequest, context) -> pb.DiffPoliciesResponse:
        diff = await self._resolving(
            context, self._service.diff_policies, request.endpoint, request.from_version, request.to_version
        )
        return pb.DiffPoliciesResponse(
            changes=[pb.LayerChange(layer=layer, from_precision=a, to_precision=b) for layer, a, b in diff.changes],
            unchanged=diff.unchanged,
        )

    @maps_domain_errors
    async def ResolvePolicy(self, request: pb.ResolvePolicyRequest, context) -> pb.ResolvePolicyResponse:
        resolution = await self._resolving(
            context, self._service.resolve_policy, request.endpoint,
            convert.spec_from_proto(request.rules, request.kv_cache),
        )
        return pb.ResolvePolicyResponse(
            valid=resolution.valid,
            errors=[pb.FieldError(field=e.field, message=e.message) for e in resolution.errors],
            resolved=convert.resolved_to_proto(resolution.layers),
        )
