"""Two service-layer operations the dashboard needed: promoting a rollout (also over gRPC and the CLI)
and previewing a rollback without writing anything."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from support import LAYERS, LightAgent, RunningControlPlane, eventually, rules, snapshot, stubs

from controlplane.services.fleet import FleetService
from controlplane.services.policies import PolicyService
from controlplane.storage.database import open_engine
from controlplane.storage.unit_of_work import unit_of_work_factory
from mixprec.cli.main import main
from mixprec.errors import FailedPrecondition, InvalidArgument, NotFound
from mixprec.policy import PolicySpec, Rule
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import policy_pb2 as pb
from mixprec.v1 import rollout_pb2 as rpb
from mixprec.v1 import rollout_pb2_grpc


def test_promote_skips_the_remaining_steps(db_url, capsys):
    plane = RunningControlPlane(db_url, rollout_interval=0.05)
    policies, fleet = stubs(plane.address)
    rollouts = rollout_pb2_grpc.RolloutServiceStub(grpc.insecure_channel(plane.address))
    policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
    policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=0, rules=rules(("layers.0.*", "fp8"))))
    policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=1, rules=rules(("*", "fp8"))))
    fleet.Activate(apb.ActivateRequest(endpoint="emb", version=1))

    async def scenario():
        agents = [LightAgent(plane.address, "emb", w).start() for w in ("w-a", "w-b", "w-c")]
        await eventually(lambda: all(a.applied == [1] for a in agents), what="fleet on v1")
        rollouts.StartRollout(rpb.StartRolloutRequest(
            endpoint="emb", version=2, steps=[rpb.RolloutStep(workers=1), rpb.RolloutStep(percent=100)],
            guardrails=rpb.Guardrails(max_drop={"cosine_to_base": 0.5}, bake_seconds=3600)))
        await eventually(lambda: sum(a.loop.version == 2 for a in agents) == 1, what="the first step's worker")
        code = main(["--server", plane.address, "rollout", "promote", "emb", "--reason", "canary looks fine"])
        out = capsys.readouterr().out
        assert code == 0 and "SUCCEEDED" in out and "promoted at step 1/2" in out
        await eventually(lambda: all(a.loop.version == 2 for a in agents), what="every worker on v2")
        for agent in agents:
            await agent.stop()

    try:
        asyncio.run(scenario())
        assert policies.GetEndpoint(pb.GetEndpointRequest(name="emb")).active_version == 2
        promoted = [e for e in fleet.ListAudit(apb.ListAuditRequest(endpoint="emb")).entries
                    if e.action == "rollout.promote"]
        assert len(promoted) == 1 and promoted[0].reason == "canary looks fine"
        with pytest.raises(grpc.RpcError) as again:
            rollouts.PromoteRollout(rpb.RolloutActionRequest(endpoint="emb"))
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no open rollout" in again.value.details()
        assert main(["--server", plane.address, "rollout", "promote", "emb"]) == 4
    finally:
        plane.stop()


@pytest.fixture
def services(db_url):
    engine = open_engine(db_url)
    uow = unit_of_work_factory(engine)
    yield PolicyService(uow), FleetService(uow)
    engine.dispose()


def test_rollback_preview_says_what_would_change_and_writes_nothing(services, db_url):
    policies, fleet = services
    policies.create_endpoint("emb", LAYERS)
    policies.create_policy("emb", 0, PolicySpec((Rule("layers.*.mlp.*", "fp8"),)))
    policies.create_policy("emb", 1, PolicySpec((Rule("*", "fp8-tensor"),)))
    fleet.activate("emb", 1)
    fleet.activate("emb", 2)
    before = snapshot(db_url)

    last_good = fleet.preview_rollback("emb")
    assert (last_good.from_version, last_good.to_version, last_good.to_base) == (2, 1, False)
    assert last_good.changes == [
        ("layers.0.attention.q_proj", "fp8-tensor", "bf16"), ("layers.0.mlp.up_proj", "fp8-tensor", "fp8"),
        ("layers.0.mlp.down_proj", "fp8-tensor", "fp8"), ("layers.1.attention.q_proj", "fp8-tensor", "bf16"),
        ("layers.1.mlp.up_proj", "fp8-tensor", "fp8"), ("layers.1.mlp.down_proj", "fp8-tensor", "fp8"),
    ]
    to_base = fleet.preview_rollback("emb", to_base=True)
    assert to_base.to_version == 0 and to_base.unchanged == 0 and {c[2] for c in to_base.changes} == {"bf16"}
    assert fleet.preview_rollback("emb", to_version=2).changes == []
    assert snapshot(db_url) == before

    with pytest.raises(InvalidArgument, match="to_version: 1 given together with to_base"):
        fleet.preview_rollback("emb", to_version=1, to_base=True)
    with pytest.raises(NotFound):
        fleet.preview_rollback("emb", to_version=9)
    policies.create_endpoint("fresh", LAYERS)
    with pytest.raises(FailedPrecondition, match="no active version"):
        fleet.preview_rollback("fresh")
    assert fleet.rollback("emb", "p99 up").active_version == last_good.to_version
