"""Every PolicyService RPC and every error code, against a real server on port 0 and a real database."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import RunningControlPlane, snapshot

from controlplane.api.errors import field_errors_of
from mixprec.v1 import policy_pb2 as pb
from mixprec.v1 import policy_pb2_grpc

LAYERS = [f"layers.{i}.{g}" for i in range(2) for g in ("attention.q_proj", "mlp.up_proj", "mlp.down_proj")]
MLP = [pb.Rule(match="layers.*.mlp.*", precision="fp8")]


@pytest.fixture
def stub(control_plane):
    with grpc.insecure_channel(control_plane.address) as channel:
        yield policy_pb2_grpc.PolicyServiceStub(channel)


@pytest.fixture
def seeded(stub):
    stub.CreateEndpoint(pb.CreateEndpointRequest(name="embedder", layers=LAYERS, model="minilm", actor="t"))
    stub.CreatePolicy(pb.CreatePolicyRequest(endpoint="embedder", parent_version=0, rules=MLP, author="ana"))
    return stub


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_every_rpc_round_trips(seeded):
    stub = seeded
    endpoint = stub.GetEndpoint(pb.GetEndpointRequest(name="embedder"))
    assert list(endpoint.layers) == LAYERS and endpoint.latest_version == 1 and endpoint.model == "minilm"
    assert [e.name for e in stub.ListEndpoints(pb.ListEndpointsRequest()).endpoints] == ["embedder"]
    v2 = stub.CreatePolicy(
        pb.CreatePolicyRequest(endpoint="embedder", parent_version=1, rules=[pb.Rule(match="*", precision="fp8")],
                               message="all")
    )
    assert (v2.version, v2.parent_version, v2.message) == (2, 1, "all")
    latest = stub.GetPolicy(pb.GetPolicyRequest(endpoint="embedder", resolved=True))
    assert latest.version == 2 and {r.precision for r in latest.resolved} == {"fp8"}
    first = stub.GetPolicy(pb.GetPolicyRequest(endpoint="embedder", version=1))
    assert first.rules[0].match == "layers.*.mlp.*" and not first.resolved
    assert [v.version for v in stub.ListPolicies(pb.ListPoliciesRequest(endpoint="embedder")).versions] == [1, 2]
    diff = stub.DiffPolicies(pb.DiffPoliciesRequest(endpoint="embedder", from_version=1, to_version=2))
    assert [c.layer for c in diff.changes] == ["layers.0.attention.q_proj", "layers.1.attention.q_proj"]
    assert diff.unchanged == 4
    dry = stub.ResolvePolicy(pb.ResolvePolicyRequest(endpoint="embedder", rules=MLP))
    assert dry.valid and [r.rule for r in dry.resolved] == [0, 1, 1, 0, 1, 1]
    bad = stub.ResolvePolicy(pb.ResolvePolicyRequest(endpoint="embedder", rules=[pb.Rule(match="zz", precision="x")]))
    assert not bad.valid and {e.field for e in bad.errors} == {"rules[0].match", "rules[0].precision"}


# (what is sent, expected code, the field or words the message must name)
BAD_REQUESTS = [
    ("CreateEndpoint", pb.CreateEndpointRequest(name="Bad_Name", layers=LAYERS), "INVALID_ARGUMENT", "name"),
    ("CreateEndpoint", pb.CreateEndpointRequest(name="a" * 64, layers=LAYERS), "INVALID_ARGUMENT", "63"),
    ("CreateEndpoint", pb.CreateEndpointRequest(name="", layers=LAYERS), "INVALID_ARGUMENT", "name"),
    ("CreateEndpoint", pb.CreateEndpointRequest(name="dup", layers=["a.b", "a.b"]), "INVALID_ARGUMENT", "layers[1]"),
    ("CreateEndpoint", pb.CreateEndpointRequest(name="sp", layers=["a b"]), "INVALID_ARGUMENT", "layers[0]"),
    ("CreateEndpoint", pb.CreateEndpointRequest(name="x", layers=LAYERS, base_precision="int8"),
     "INVALID_ARGUMENT", "base_precision"),
    ("CreateEndpoint", pb.CreateEndpointRequest(name="embedder", layers=LAYERS), "ALREADY_EXISTS", "embedder"),
    ("GetEndpoint", pb.GetEndpointRequest(name="missing"), "NOT_FOUND", "missing"),
    ("GetEndpoint", pb.GetEndpointRequest(name="UPPER"), "INVALID_ARGUMENT", "name"),
    ("CreatePolicy", pb.CreatePolicyRequest(endpoint="embedder", parent_version=1,
                                            rules=[pb.Rule(match="layers.7.*", precision="fp8")]),
     "INVALID_ARGUMENT", "rules[0].match"),
    ("CreatePolicy", pb.CreatePolicyRequest(endpoint="embedder", parent_version=1,
                                            rules=[pb.Rule(match="layers.*", precision="fp4")]),
     "INVALID_ARGUMENT", "rules[0].precision"),
    ("CreatePolicy", pb.CreatePolicyRequest(endpoint="embedder", parent_version=1,
                                            rules=[pb.Rule(match="", precision="fp8")]),
     "INVALID_ARGUMENT", "rules[0].match"),
    ("CreatePolicy", pb.CreatePolicyRequest(endpoint="embedder", parent_version=1,
                                            rules=[pb.Rule(match="layers.[0", precision="fp8")]),
     "INVALID_ARGUMENT", "never closed"),
    ("CreatePolicy", pb.CreatePolicyRequest(endpoint="embedder", parent_version=1, rules=MLP, kv_cache="fp8"),
     "INVALID_ARGUMENT", "kv_cache"),
    ("CreatePolicy", pb.CreatePolicyRequest(endpoint="embedder", parent_version=0, rules=MLP), "ABORTED", "latest is 1"),
    ("CreatePolicy", pb.CreatePolicyRequest(endpoint="embedder", parent_version=5, rules=MLP), "ABORTED", "latest is 1"),
    ("CreatePolicy", pb.CreatePolicyRequest(endpoint="missing", parent_version=0, rules=MLP), "NOT_FOUND", "missing"),
    ("CreatePolicy", pb.CreatePolicyRequest(endpoint="no-catalog", parent_version=0, rules=MLP),
     "FAILED_PRECONDITION", "catalog"),
    ("GetPolicy", pb.GetPolicyRequest(endpoint="embedder", version=9), "NOT_FOUND", "version 9"),
    ("GetPolicy", pb.GetPolicyRequest(endpoint="no-catalog"), "NOT_FOUND", "no policy yet"),
    ("ListPolicies", pb.ListPoliciesRequest(endpoint="missing"), "NOT_FOUND", "missing"),
    ("DiffPolicies", pb.DiffPoliciesRequest(endpoint="embedder", from_version=1, to_version=4), "NOT_FOUND", "4"),
    ("DiffPolicies", pb.DiffPoliciesRequest(endpoint="embedder", from_version=0, to_version=1),
     "INVALID_ARGUMENT", "from_version"),
    ("ResolvePolicy", pb.ResolvePolicyRequest(endpoint="missing", rules=MLP), "NOT_FOUND", "missing"),
]


def test_bad_requests_get_their_code_a_clear_message_and_write_nothing(seeded, db_url):
    seeded.CreateEndpoint(pb.CreateEndpointRequest(name="no-catalog"))
    before = snapshot(db_url)
    for method, request, code, words in BAD_REQUESTS:
        err = code_of(lambda m=method, r=request: getattr(seeded, m)(r))
        assert err.code().name == code, (method, request, err.details())
        assert words in err.details(), (method, err.details())
        if code == "INVALID_ARGUMENT":
            assert field_errors_of(err), "INVALID_ARGUMENT carries a BadRequest detail per field"
    assert snapshot(db_url) == before


def test_health_and_reflection(control_plane):
    with grpc.insecure_channel(control_plane.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "mixprec.v1.PolicyService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for reply in replies for s in reply.list_services_response.service}
        assert {"mixprec.v1.PolicyService", "grpc.health.v1.Health"} <= names


def test_a_database_that_goes_away_is_unavailable(postgres):
    url = postgres.create()
    from controlplane.storage.database import open_engine, upgrade

    engine = open_engine(url)
    upgrade(engine)
    engine.dispose()
    running = RunningControlPlane(url)
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            assert stub.ListEndpoints(pb.ListEndpointsRequest()).endpoints == []
            postgres.drop(url)  # terminates the server's connections and removes the database
            for call in (
                lambda: stub.ListEndpoints(pb.ListEndpointsRequest()),
                lambda: stub.CreateEndpoint(pb.CreateEndpointRequest(name="e", layers=LAYERS)),
            ):
                err = code_of(call)
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
                assert "database" in err.details()
    finally:
        running.stop()
