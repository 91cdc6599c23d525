"""Progressive rollouts against light agents: pass, breach and automatic rollback, inconclusive, abort."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from support import LAYERS, LightAgent, RunningControlPlane, eventually, rules, stubs

from controlplane.services.rollout_analysis import worker_rank
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import policy_pb2 as pb
from mixprec.v1 import rollout_pb2 as rpb
from mixprec.v1 import rollout_pb2_grpc

WORKERS = ["w-a", "w-b", "w-c", "w-d"]


@pytest.fixture
def plane(db_url):
    running = RunningControlPlane(db_url, rollout_interval=0.05)
    policies, fleet = stubs(running.address)
    policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
    policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=0,
                                                 rules=rules(("layers.0.mlp.*", "fp8"))))  # 2 fp8 layers
    policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=1, rules=rules(("*", "fp8"))))
    fleet.Activate(apb.ActivateRequest(endpoint="emb", version=1))
    running.rollouts = rollout_pb2_grpc.RolloutServiceStub(grpc.insecure_channel(running.address))
    running.fleet = fleet
    yield running
    running.stop()


def start(plane, version=2, steps=(1, 50.0, 100.0), **guardrails):
    guardrails.setdefault("max_drop", {"cosine_to_base": 0.01})
    return plane.rollouts.StartRollout(rpb.StartRolloutRequest(
        endpoint="emb", version=version, actor="test",
        steps=[rpb.RolloutStep(workers=s) if isinstance(s, int) else rpb.RolloutStep(percent=s) for s in steps],
        guardrails=rpb.Guardrails(**guardrails)))


def state_of(plane) -> rpb.Rollout:
    return plane.rollouts.GetRollout(rpb.GetRolloutRequest(endpoint="emb"))


async def fleet_up(plane, quiet=()):
    agents = []
    for worker in WORKERS:
        agent = LightAgent(plane.address, "emb", worker).start()
        if worker in quiet:
            agent.loop._on_applied = None  # applies, ACKs, but never reports quality
        agents.append(agent)
    for agent in agents:
        await asyncio.wait_for(agent.loop.connected.wait(), 10)
    await eventually(lambda: all(a.applied == [1] for a in agents), what="fleet on v1")
    return agents


def test_a_rollout_that_passes_every_step(plane):
    async def scenario():
        agents = await fleet_up(plane)
        seen_sizes = set()
        start(plane, reports_per_step=1, bake_seconds=0.2)

        def done():
            r = state_of(plane)
            seen_sizes.add(len(r.new_version_workers))
            return r.state == rpb.SUCCEEDED

        await eventually(done, timeout=20, what="rollout success")
        rollout = state_of(plane)
        assert seen_sizes >= {1, 2, 4} and rollout.current_step == 2
        # Stable choice: the first step's worker is the one with the lowest rank.
        assert rollout.new_version_workers[0] == min(WORKERS, key=worker_rank)
        await eventually(lambda: all(a.loop.version == 2 for a in agents), what="everyone on v2")
        assert plane.fleet.GetFleet(apb.GetFleetRequest(endpoint="emb")).active_version == 2
        for agent in agents:
            await agent.stop()

    asyncio.run(scenario())


def test_a_breached_guardrail_rolls_every_worker_back(plane):
    async def scenario():
        agents = await fleet_up(plane)
        # v2 runs 6 layers in FP8: the agents report a cosine drop of 0.006, over the 0.001 allowed.
        start(plane, steps=(50.0, 100.0), max_drop={"cosine_to_base": 0.001}, max_failed_checks=1,
              reports_per_step=2)
        await eventually(lambda: state_of(plane).state == rpb.ROLLED_BACK, timeout=20, what="automatic rollback")
        rollout = state_of(plane)
        assert "max_drop[cosine_to_base] measured 0.006" in rollout.message and "limit <= 0.001" in rollout.message
        assert rollout.failed_checks == 2
        assert any(not c.passed and c.measured == pytest.approx(0.006) for c in rollout.last_checks)
        await eventually(lambda: all(a.loop.version == 1 for a in agents), what="everyone back on v1")
        assert max(len(a.applied) for a in agents) == 3  # v1, v2, v1 on the chosen workers
        assert plane.fleet.GetFleet(apb.GetFleetRequest(endpoint="emb")).active_version == 1
        audit = plane.fleet.ListAudit(apb.ListAuditRequest(endpoint="emb")).entries
        assert audit[0].action == "rollout.rolled_back" and "0.006" in audit[0].reason
        for agent in agents:
            await agent.stop()

    asyncio.run(scenario())


def test_a_metric_that_must_not_rise_rolls_back_when_it_rises(plane):
    async def scenario():
        agents = await fleet_up(plane)
        # v2 runs 6 layers in FP8: the agents report KL +0.06, over the 0.02 allowed (its cosine drop passes).
        start(plane, steps=(1, 100.0), max_drop={"cosine_to_base": 0.01}, max_rise={"kl_divergence": 0.02})
        await eventually(lambda: state_of(plane).state == rpb.ROLLED_BACK, timeout=20, what="automatic rollback")
        rollout = state_of(plane)
        assert "max_rise[kl_divergence] measured 0.06" in rollout.message and "limit <= 0.02" in rollout.message
        checks = {c.guardrail: c.passed for c in rollout.last_checks}
        assert checks == {"max_drop[cosine_to_base]": True, "max_rise[kl_divergence]": False}
        assert dict(rollout.guardrails.max_rise) == {"kl_divergence": 0.02}
        for agent in agents:
            await agent.stop()

    asyncio.run(scenario())


def test_a_user_metric_guarded_by_name_on_its_rise_rolls_back_when_it_rises(plane):
    async def scenario():
        agents = await fleet_up(plane)
        # The control plane knows nothing of team_log_loss but its name: the guardrail's side says a rise is worse.
        start(plane, steps=(1, 100.0), max_drop={"cosine_to_base": 0.01}, max_rise={"team_log_loss": 0.02})
        await eventually(lambda: state_of(plane).state == rpb.ROLLED_BACK, timeout=20, what="automatic rollback")
        rollout = state_of(plane)
        assert "max_rise[team_log_loss] measured 0.03" in rollout.message
        for agent in agents:
            await agent.stop()

    asyncio.run(scenario())


def test_an_inconclusive_step_pauses_and_resumes(plane):
    async def scenario():
        agents = await fleet_up(plane, quiet=WORKERS)
        start(plane, steps=(1, 100.0), step_timeout_seconds=0.5)
        await eventually(lambda: state_of(plane).state == rpb.PAUSED, timeout=20, what="inconclusive pause")
        assert "inconclusive at step 1" in state_of(plane).message
        for agent in agents:
            agent.loop._on_applied = agent._report
        # The chosen worker reports once it is (re)assigned; resuming restarts the step's clock.
        chosen = state_of(plane).new_version_workers[0]
        await next(a for a in agents if a.loop.identity.worker_id == chosen)._report(2, {k: "fp8" for k in LAYERS})
        plane.rollouts.ResumeRollout(rpb.RolloutActionRequest(endpoint="emb", actor="test", reason="reports are back"))
        await eventually(lambda: state_of(plane).state == rpb.SUCCEEDED, timeout=20, what="success after resume")
        for agent in agents:
            await agent.stop()

    asyncio.run(scenario())


def test_abort_second_rollout_and_rollback_during_a_rollout(plane):
    async def scenario():
        agents = await fleet_up(plane, quiet=WORKERS)
        start(plane, steps=(2, 100.0))
        await eventually(lambda: sum(a.loop.version == 2 for a in agents) == 2, what="two workers on v2")
        with pytest.raises(grpc.RpcError) as second:
            start(plane)
        assert second.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "abort it first" in second.value.details()
        with pytest.raises(grpc.RpcError) as activate:
            plane.fleet.Activate(apb.ActivateRequest(endpoint="emb", version=2))
        assert activate.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        aborted = plane.rollouts.AbortRollout(rpb.RolloutActionRequest(endpoint="emb", actor="t", reason="stop"))
        assert aborted.state == rpb.ABORTED
        await eventually(lambda: all(a.loop.version == 1 for a in agents), what="abort restores v1")

        start(plane, steps=(2, 100.0))
        await eventually(lambda: sum(a.loop.version == 2 for a in agents) == 2, what="two workers on v2 again")
        plane.fleet.Rollback(apb.RollbackRequest(endpoint="emb", reason="pager", to_base=True))
        assert state_of(plane).state == rpb.ROLLED_BACK and "pager" in state_of(plane).message
        await eventually(lambda: all(set(a.loop.precision_map.values()) == {"bf16"} for a in agents),
                         what="everyone at base")
        for agent in agents:
            await agent.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "steps, guardrails, field",
    [
        ((1, 50.0), {}, "steps[1]"),
        ((150.0, 100.0), {}, "steps[0].percent"),
        ((1, 100.0), {"max_drop": {"mrr": -1.0}}, "guardrails.max_drop[mrr]"),
        ((1, 100.0), {"bake_seconds": -5}, "guardrails.bake_seconds"),
        ((1, 100.0), {"max_drop": {"kl_divergence": 0.02}}, "guardrails.max_drop[kl_divergence]"),
        ((1, 100.0), {"max_rise": {"top1_agreement": 0.01}}, "guardrails.max_rise[top1_agreement]"),
    ],
)
def test_bad_plans_are_invalid_arguments(plane, steps, guardrails, field):
    with pytest.raises(grpc.RpcError) as caught:
        start(plane, steps=steps, **guardrails)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in caught.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        start(plane, version=9)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_rollout_cli_plan_start_status_abort(plane, tmp_path, capsys):
    import json

    from mixprec.cli.main import main

    def cli(*argv):
        code = main(["--server", plane.address, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    target = tmp_path / "map.yaml"
    target.write_text("rules:\n  - {match: 'layers.*', precision: fp8}\n")
    code, out, _ = cli("--output", "json", "rollout", "plan", "emb", "-f", str(target), "--stages", "mlp,attention")
    assert code == 0
    stages = json.loads(out)
    assert [(s["stage"], s["version"], s["layers off base"]) for s in stages] == [("mlp", 3, 4), ("attention", 4, 6)]
    code, out, _ = cli("policy", "show", "emb", "3")
    assert "layers.*.mlp.*" in out and "stage 1/2: mlp" in out

    async def scenario():
        agents = await fleet_up(plane, quiet=WORKERS)
        code, out, err = await asyncio.to_thread(cli, "rollout", "start", "emb", "3", "--steps", "1,100%",
                                                 "--max-drop", "cosine_to_base=0.01", "--bake", "0")
        assert code == 0 and "v1 -> v3" in out, err
        await eventually(lambda: sum(a.loop.version == 3 for a in agents) == 1, what="one worker on v3")
        code, out, _ = await asyncio.to_thread(cli, "rollout", "status", "emb")
        assert code == 0 and "[RUNNING] step 1/2" in out and "new" in out
        code, out, _ = await asyncio.to_thread(cli, "rollout", "start", "emb", "4")
        assert code == 4
        code, out, _ = await asyncio.to_thread(cli, "rollout", "abort", "emb", "--reason", "enough")
        assert code == 0 and "[ABORTED]" in out
        await eventually(lambda: all(a.loop.version == 1 for a in agents), what="abort restores v1")
        for agent in agents:
            await agent.stop()

    asyncio.run(scenario())
    assert cli("rollout", "start", "emb", "3", "--steps", "1,abc")[0] == 2
    code, _, err = cli("rollout", "start", "emb", "3", "--max-drop", "cosine")
    assert code == 2 and "METRIC=NUMBER" in err
    code, _, err = cli("rollout", "start", "emb", "3", "--max-drop", "kl_divergence=0.02")
    assert code == 2 and "--max-drop kl_divergence" in err and "must not rise" in err
    code, _, err = cli("rollout", "start", "emb", "3", "--limit", "bleu=1")
    assert code == 2 and "--limit" in err and "'bleu'" in err
    code, out, _ = cli("rollout", "list", "emb")
    assert code == 0 and "ABORTED" in out


def test_two_replicas_never_advance_the_same_rollout_twice(empty_pg_url):
    from controlplane.storage.database import open_engine, upgrade

    engine = open_engine(empty_pg_url)
    upgrade(engine)
    engine.dispose()
    one = RunningControlPlane(empty_pg_url, rollout_interval=0.01)
    two = RunningControlPlane(empty_pg_url, rollout_interval=0.01)
    try:
        policies, fleet = stubs(one.address)
        policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
        policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=0, rules=rules(("*", "fp8"))))
        rollouts = rollout_pb2_grpc.RolloutServiceStub(grpc.insecure_channel(two.address))

        async def scenario():
            agents = [LightAgent(a, "emb", w).start() for a, w in zip([one.address, two.address] * 2, WORKERS,
                                                                         strict=True)]
            for agent in agents:
                await asyncio.wait_for(agent.loop.connected.wait(), 10)
            rollouts.StartRollout(rpb.StartRolloutRequest(
                endpoint="emb", version=1, steps=[rpb.RolloutStep(workers=1), rpb.RolloutStep(percent=50),
                                                  rpb.RolloutStep(percent=100)],
                guardrails=rpb.Guardrails(max_drop={"cosine_to_base": 0.01})))
            await eventually(lambda: rollouts.GetRollout(rpb.GetRolloutRequest(endpoint="emb")).state == rpb.SUCCEEDED,
                             timeout=30, what="success")
            await eventually(lambda: all(a.loop.version == 1 for a in agents), what="all on v1")
            for agent in agents:
                await agent.stop()

        asyncio.run(scenario())
        audit = [e.action for e in fleet.ListAudit(apb.ListAuditRequest(endpoint="emb")).entries]
        assert audit.count("rollout.succeeded") == 1 and audit.count("rollout.start") == 1
        import sqlalchemy as sa

        engine = sa.create_engine(empty_pg_url)
        with engine.connect() as conn:
            kinds = [k for (k,) in conn.execute(sa.text("SELECT kind FROM activations ORDER BY id"))]
        engine.dispose()
        assert kinds == ["rollout"]  # both controllers ran; the endpoint was switched once
    finally:
        one.stop()
        two.stop()


def test_a_step_short_of_reports_asks_its_workers_to_report_again_before_pausing(plane):
    async def scenario():
        # Their first reports were lost (say, with a replica): they apply and ACK, but report only when asked.
        agents = await fleet_up(plane, quiet=WORKERS)
        for agent in agents:
            agent.loop._on_report_requested = (
                lambda version, a=agent: asyncio.ensure_future(a._report(version, dict.fromkeys(LAYERS, "fp8"))))
        start(plane, steps=(1, 100.0), step_timeout_seconds=0.3)
        await eventually(lambda: state_of(plane).state == rpb.SUCCEEDED, timeout=30, what="success")
        actions = [e.action for e in plane.fleet.ListAudit(apb.ListAuditRequest(endpoint="emb")).entries]
        assert actions.count("rollout.reports_requested") == 2  # once per step
        assert "rollout.paused" not in actions
        for agent in agents:
            await agent.stop()

    asyncio.run(scenario())


def test_a_report_resent_after_a_lost_ack_counts_once_toward_a_step(plane):
    async def scenario():
        agents = await fleet_up(plane)
        first = next(a for a in agents if a.loop.identity.worker_id == min(WORKERS, key=worker_rank))
        await eventually(lambda: first.loop.unacknowledged_reports == [], what="v1's report acknowledged")
        acknowledge = first.loop._acknowledged
        first.loop._acknowledged = lambda ack: None  # every ReportAck is lost on the way
        start(plane, steps=(1, 100.0), reports_per_step=2, step_timeout_seconds=60)
        await eventually(lambda: first.loop.version == 2 and first.loop.unacknowledged_reports == [2],
                         what="the step's worker on v2 with its report unacknowledged")
        measured = first.loop._quality[2].report_id
        for _ in range(2):  # reconnects: the unacknowledged report goes out again each time
            await first.stop()
            first.start()
            await asyncio.wait_for(first.loop.connected.wait(), 10)
        first.loop._acknowledged = acknowledge
        await first.stop()
        first.start()
        await eventually(lambda: first.loop.unacknowledged_reports == [], what="a resend stored and acknowledged")
        await asyncio.sleep(0.5)  # ten controller passes
        rollout = state_of(plane)
        assert (rollout.state, rollout.current_step) == (rpb.RUNNING, 0), rollout.message

        await first._report(2, dict.fromkeys(LAYERS, "fp8"))  # a second measurement is a second report
        assert first.loop._quality[2].report_id != measured
        await eventually(lambda: state_of(plane).current_step == 1, what="step 2 after two distinct reports")
        for agent in agents:
            await agent.stop()

    asyncio.run(scenario())
