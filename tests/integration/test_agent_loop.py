"""Agents and control plane in one loop, with light agents (no torch) speaking the real protocol."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest
from support import LAYERS, LightAgent, RunningControlPlane, eventually, fleet_of, rules, stubs

from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import policy_pb2 as pb
from worker.sync import AgentIdentity, Backoff, SyncLoop


def test_catalog_learning_push_ack_reports_rollback_and_audit(control_plane):
    policies, fleet = stubs(control_plane.address)
    policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", model="light"))  # no catalog yet

    async def scenario():
        a = LightAgent(control_plane.address, "emb", "a").start()
        await asyncio.wait_for(a.loop.connected.wait(), 10)
        assert list(policies.GetEndpoint(pb.GetEndpointRequest(name="emb")).layers) == LAYERS
        b = LightAgent(control_plane.address, "emb", "b").start()
        odd = LightAgent(control_plane.address, "emb", "odd", layers=LAYERS[:-1] + ["head"]).start()
        await eventually(lambda: odd.loop.fatal_error is not None, what="catalog refusal")
        assert odd.loop.fatal_error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "missing 1: layers.1.mlp.down_proj" in odd.loop.fatal_error.details()
        assert "extra 1: head" in odd.loop.fatal_error.details()
        await odd.stop()
        await asyncio.wait_for(b.loop.connected.wait(), 10)

        policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=0,
                                                     rules=rules(("layers.*.mlp.*", "fp8"))))
        policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=1, rules=rules(("*", "fp8"))))
        assert a.applied == b.applied == []  # creating a version pushes nothing; activating does
        response = fleet.Activate(apb.ActivateRequest(endpoint="emb", version=1, actor="ana", reason="mlp first"))
        assert (response.previous_version, response.active_version, response.connected_workers) == (0, 1, 2)
        await eventually(lambda: a.applied == b.applied == [1], what="v1 everywhere")
        assert a.loop.precision_map["layers.0.mlp.up_proj"] == "fp8"
        assert a.loop.precision_map["layers.0.attention.q_proj"] == "bf16"

        fleet.Activate(apb.ActivateRequest(endpoint="emb", version=2, actor="ana", reason="everything"))
        await eventually(lambda: a.applied == b.applied == [1, 2], what="v2 everywhere")
        # Hellos, ACKs and reports are written behind, a moment after they arrive.
        await eventually(lambda: fleet_of(fleet, "emb").get("b", apb.WorkerStatus()).last_quality.version == 2,
                         what="v2 reports")
        status = fleet_of(fleet, "emb")
        assert {w: (s.connected, s.applied_version, s.last_ack_version) for w, s in status.items()} == {
            "a": (True, 2, 2), "b": (True, 2, 2)}
        assert status["a"].last_quality.deltas["cosine_to_base"] == pytest.approx(-0.006)

        rolled = fleet.Rollback(apb.RollbackRequest(endpoint="emb", reason="quality alert", actor="oncall"))
        assert (rolled.previous_version, rolled.active_version) == (2, 1)
        await eventually(lambda: a.applied == b.applied == [1, 2, 1], what="rollback everywhere")
        with pytest.raises(grpc.RpcError) as nothing_left:
            fleet.Rollback(apb.RollbackRequest(endpoint="emb", reason="again"))
        assert nothing_left.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        base = fleet.Rollback(apb.RollbackRequest(endpoint="emb", reason="incident", to_base=True))
        assert base.active_version == 3
        await eventually(lambda: a.applied[-1] == b.applied[-1] == 3, what="base everywhere")
        assert set(a.loop.precision_map.values()) == {"bf16"}
        await a.stop()
        await b.stop()

    asyncio.run(scenario())
    time.sleep(0.5)  # the recorder writes presence a few times a second
    assert {w.connected for w in fleet_of(fleet, "emb").values()} == {False}
    audit = fleet.ListAudit(apb.ListAuditRequest(endpoint="emb")).entries
    actions = [(e.action, e.actor, e.reason) for e in audit]
    assert ("activate", "ana", "mlp first") in actions and ("rollback", "oncall", "quality alert") in actions
    assert actions[0][0] == "rollback" and json.loads(audit[0].detail_json)["version"] == 3
    assert any(a == "catalog.learn" for a, _, _ in actions)


def test_nack_keeps_last_good_version_shows_in_fleet_and_is_not_resent(db_url, tmp_path):
    running = RunningControlPlane(db_url, poll_interval=0.1)  # frequent re-reads must not re-send
    policies, fleet = stubs(running.address)
    policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
    for parent in (0, 1, 2):
        policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=parent,
                                                     rules=rules(("layers.*.mlp.*", "fp8"))))

    async def scenario():
        agent = LightAgent(running.address, "emb", "w1", refuse={2}, state_dir=tmp_path).start()
        await asyncio.wait_for(agent.loop.connected.wait(), 10)
        fleet.Activate(apb.ActivateRequest(endpoint="emb", version=1))
        await eventually(lambda: agent.applied == [1])
        fleet.Activate(apb.ActivateRequest(endpoint="emb", version=2))
        await eventually(lambda: fleet_of(fleet, "emb")["w1"].last_nack_version == 2, what="NACK recorded")
        status = fleet_of(fleet, "emb")["w1"]
        assert status.applied_version == 1 and "cannot run fp8" in status.last_nack
        await asyncio.sleep(0.5)
        assert agent.loop.version == 1 and agent.applied == [1]
        # A reconnect does not bring the refused version back either...
        await agent.stop()
        again = LightAgent(running.address, "emb", "w1", refuse={2}, state_dir=tmp_path)
        assert (await again.loop.restore()).version == 1
        again.start()
        await asyncio.wait_for(again.loop.connected.wait(), 10)
        await asyncio.sleep(0.5)
        assert again.applied == [1]  # only the restore
        # ...but a newer version is sent.
        fleet.Activate(apb.ActivateRequest(endpoint="emb", version=3))
        await eventually(lambda: again.applied == [1, 3])
        await again.stop()

    try:
        asyncio.run(scenario())
    finally:
        running.stop()


def test_bad_hellos_are_refused_with_their_codes(control_plane):
    policies, _ = stubs(control_plane.address)
    policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))

    async def refused(identity):
        agent = SyncLoop(control_plane.address, identity, apply=None, backoff=Backoff(initial=5))
        task = asyncio.ensure_future(agent.run())
        await eventually(lambda: agent.fatal_error is not None)
        task.cancel()
        return agent.fatal_error

    async def scenario():
        missing = await refused(AgentIdentity("nope", "w", LAYERS))
        assert missing.code() == grpc.StatusCode.NOT_FOUND
        bad_id = await refused(AgentIdentity("emb", "", LAYERS))
        assert bad_id.code() == grpc.StatusCode.INVALID_ARGUMENT and "hello.worker_id" in bad_id.details()
        dup = await refused(AgentIdentity("emb", "w", ["a.b", "a.b"]))
        assert dup.code() == grpc.StatusCode.INVALID_ARGUMENT and "duplicate" in dup.details()

    asyncio.run(scenario())


def test_a_change_on_one_replica_reaches_agents_of_another_through_redis(empty_pg_url, redis_url):
    from controlplane.storage.database import open_engine, upgrade

    engine = open_engine(empty_pg_url)
    upgrade(engine)
    engine.dispose()
    # Polling is slowed to a minute, so only the Redis message can deliver within the test's wait.
    one = RunningControlPlane(empty_pg_url, redis_url=redis_url, poll_interval=60)
    two = RunningControlPlane(empty_pg_url, redis_url=redis_url, poll_interval=60)
    try:
        policies, fleet_one = stubs(one.address)
        policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
        policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=0, rules=rules(("*", "fp8"))))

        async def scenario():
            agent = LightAgent(two.address, "emb", "w").start()
            await asyncio.wait_for(agent.loop.connected.wait(), 10)
            await asyncio.sleep(0.3)  # let replica two subscribe
            fleet_one.Activate(apb.ActivateRequest(endpoint="emb", version=1))
            await eventually(lambda: agent.applied == [1], timeout=5, what="push through Redis")
            await agent.stop()

        asyncio.run(scenario())
    finally:
        one.stop()
        two.stop()


def test_fleet_cli_activate_rollback_fleet_audit(control_plane, capsys):
    from mixprec.cli.main import main

    policies, _ = stubs(control_plane.address)
    policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
    policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=0, rules=rules(("*", "fp8"))))
    policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=1, rules=rules(("layers.0.*", "fp8"))))

    def cli(*argv):
        code = main(["--server", control_plane.address, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    async def scenario():
        agent = LightAgent(control_plane.address, "emb", "w1", refuse={2}).start()
        await asyncio.wait_for(agent.loop.connected.wait(), 10)
        code, out, _ = await asyncio.to_thread(cli, "activate", "emb", "1", "--reason", "try fp8")
        assert code == 0 and "activated v0 -> v1" in out
        await eventually(lambda: agent.applied == [1])
        await asyncio.to_thread(cli, "activate", "emb", "2")
        await eventually(lambda: json.loads(cli("fleet", "emb", "--output", "json")[1])[0]["last_nack"] is not None)
        code, out, _ = await asyncio.to_thread(cli, "fleet", "emb", "--output", "json")
        (worker,) = json.loads(out)
        assert worker["worker_id"] == "w1" and worker["connected"] is True
        assert worker["applied_version"] == 1 and worker["last_nack"]["version"] == 2
        assert "cannot run fp8" in worker["last_nack"]["error"]
        code, out, _ = await asyncio.to_thread(cli, "fleet", "emb")
        assert code == 0 and "w1" in out and "v2: layer layers.0.mlp.up_proj" in out
        code, out, _ = await asyncio.to_thread(cli, "rollback", "emb", "--reason", "incident 42", "--to-base")
        assert code == 0 and "rolled back v2 -> v3" in out
        await eventually(lambda: agent.applied == [1, 3])
        await agent.stop()

    asyncio.run(scenario())
    code, out, _ = cli("audit", "emb", "--output", "json")
    entries = json.loads(out)
    assert [e["action"] for e in entries][:4] == ["rollback", "policy.create", "worker.nack", "activate"]
    assert entries[2]["actor"] == "w1" and entries[2]["detail"] == {"worker": "w1", "version": 2}
    assert entries[0]["reason"] == "incident 42" and entries[0]["detail"]["version"] == 3
    # Bad input through the fleet commands: codes and messages.
    assert cli("activate", "emb", "9")[0] == 3
    code, _, err = cli("rollback", "emb", "--reason", " ")
    assert code == 2 and "reason" in err
    code, _, err = cli("rollback", "nope", "--reason", "x")
    assert code == 3 and "'nope' does not exist" in err
    code, _, err = cli("activate", "emb", "0")
    assert code == 2 and "version" in err


def test_an_ack_of_an_older_measurement_leaves_the_newer_report_to_be_resent():
    async def noop(version, precision_map):
        return None

    loop = SyncLoop("127.0.0.1:1", AgentIdentity("emb", "w", LAYERS), noop)
    loop.report(apb.Report(kind=apb.Report.QUALITY, version=3, samples=8))
    older = loop._quality[3].report_id
    loop.report(apb.Report(kind=apb.Report.QUALITY, version=3, samples=9))  # measured again
    newer = loop._quality[3].report_id
    assert older and newer and older != newer
    loop._acknowledged(apb.ReportAck(kind=apb.Report.QUALITY, version=3, report_id=older))
    assert loop.unacknowledged_reports == [3]
    loop._acknowledged(apb.ReportAck(kind=apb.Report.QUALITY, version=3, report_id=newer))
    assert loop.unacknowledged_reports == []
