"""Rollouts driven by a real control plane process, with agents speaking the real protocol."""

from __future__ import annotations

import asyncio

import pytest
from processes import ControlPlaneProc
from support import LAYERS, LightAgent, eventually

from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import policy_pb2 as pb
from mixprec.v1 import rollout_pb2 as rpb

WORKERS = ["w-a", "w-b", "w-c", "w-d"]


@pytest.fixture
def plane(tmp_path):
    db = f"sqlite:///{tmp_path / 'cp.db'}"
    running = ControlPlaneProc(db, tmp_path)
    running.db = db
    running.policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
    running.policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=0,
                                                         rules=[pb.Rule(match="layers.0.mlp.*", precision="fp8")]))
    running.policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=1,
                                                         rules=[pb.Rule(match="*", precision="fp8")]))
    running.fleet.Activate(apb.ActivateRequest(endpoint="emb", version=1))
    yield running
    running.stop()


def start(plane, steps, **guardrails):
    guardrails.setdefault("max_drop", {"cosine_to_base": 0.01})
    return plane.rollouts.StartRollout(rpb.StartRolloutRequest(
        endpoint="emb", version=2, actor="e2e",
        steps=[rpb.RolloutStep(workers=s) if isinstance(s, int) else rpb.RolloutStep(percent=s) for s in steps],
        guardrails=rpb.Guardrails(**guardrails)))


def rollout(plane) -> rpb.Rollout:
    return plane.rollouts.GetRollout(rpb.GetRolloutRequest(endpoint="emb"))


async def fleet_up(address, quiet=False):
    agents = [LightAgent(address, "emb", w).start() for w in WORKERS]
    if quiet:
        for agent in agents:
            agent.loop._on_applied = None
    await eventually(lambda: all(a.applied[-1:] == [1] for a in agents), timeout=20, what="fleet on v1")
    return agents


async def stop_all(agents):
    for agent in agents:
        await agent.stop()


def test_rollout_passes_every_step(plane):
    async def scenario():
        agents = await fleet_up(plane.address)
        start(plane, (1, 50.0, 100.0), bake_seconds=0.5)
        await eventually(lambda: rollout(plane).state == rpb.SUCCEEDED, timeout=60, what="success")
        await eventually(lambda: all(a.loop.version == 2 for a in agents), what="everyone on v2")
        await stop_all(agents)

    asyncio.run(scenario())
    assert plane.fleet.GetFleet(apb.GetFleetRequest(endpoint="emb")).active_version == 2


def test_breached_guardrail_rolls_back_with_the_reason_recorded(plane):
    async def scenario():
        agents = await fleet_up(plane.address)
        start(plane, (1, 100.0), max_drop={"cosine_to_base": 0.001})
        await eventually(lambda: rollout(plane).state == rpb.ROLLED_BACK, timeout=60, what="automatic rollback")
        await eventually(lambda: all(a.loop.version == 1 for a in agents), what="everyone back on v1")
        await stop_all(agents)

    asyncio.run(scenario())
    message = rollout(plane).message
    assert "max_drop[cosine_to_base] measured 0.006" in message
    audit = plane.fleet.ListAudit(apb.ListAuditRequest(endpoint="emb")).entries
    assert audit[0].action == "rollout.rolled_back" and audit[0].actor == "controller" and "0.006" in audit[0].reason


def test_inconclusive_step_pauses_and_resumes(plane):
    async def scenario():
        agents = await fleet_up(plane.address, quiet=True)
        start(plane, (1, 100.0), step_timeout_seconds=1.0)
        await eventually(lambda: rollout(plane).state == rpb.PAUSED, timeout=60, what="inconclusive pause")
        assert "inconclusive" in rollout(plane).message
        chosen = next(a for a in agents if a.loop.identity.worker_id == rollout(plane).new_version_workers[0])
        plane.rollouts.ResumeRollout(rpb.RolloutActionRequest(endpoint="emb", actor="e2e", reason="looked at it"))
        for agent in agents:
            agent.loop._on_applied = agent._report
        await chosen._report(2, {layer: "fp8" for layer in LAYERS})
        await eventually(lambda: rollout(plane).state == rpb.SUCCEEDED, timeout=60, what="success after resume")
        await stop_all(agents)

    asyncio.run(scenario())


def test_control_plane_sigkilled_mid_rollout_resumes_at_the_same_step(plane, tmp_path):
    async def scenario():
        agents = await fleet_up(plane.address, quiet=True)
        start(plane, (1, 50.0, 100.0), step_timeout_seconds=600)
        chosen_id = None

        def at_step_one():
            nonlocal chosen_id
            r = rollout(plane)
            chosen_id = r.new_version_workers[0] if r.new_version_workers else None
            return chosen_id

        await eventually(at_step_one, timeout=30, what="first worker chosen")
        chosen = next(a for a in agents if a.loop.identity.worker_id == chosen_id)
        await eventually(lambda: chosen.loop.version == 2, what="the chosen worker on v2")
        await chosen._report(2, {layer: "fp8" for layer in LAYERS})
        await eventually(lambda: rollout(plane).current_step == 1 and len(rollout(plane).new_version_workers) == 2,
                         timeout=30, what="step 2")
        before = rollout(plane)
        port = plane.port
        plane.kill()
        restarted = ControlPlaneProc(plane.db, tmp_path, port)
        try:
            after = rollout(restarted)
            assert (after.state, after.current_step, list(after.new_version_workers)) == (
                rpb.RUNNING, 1, list(before.new_version_workers))
            # Reconnecting workers keep their side.
            await eventually(lambda: sum(a.loop.connected.is_set() for a in agents) == 4, timeout=30)
            await asyncio.sleep(1)
            assert sorted(a.loop.identity.worker_id for a in agents if a.loop.version == 2) == sorted(
                before.new_version_workers)
            for agent in agents:
                if agent.loop.version == 2:
                    await agent._report(2, {layer: "fp8" for layer in LAYERS})
            await eventually(lambda: rollout(restarted).current_step == 2, timeout=30, what="step 3 after restart")
            plane.channel, plane.rollouts = restarted.channel, restarted.rollouts
            aborted = restarted.rollouts.AbortRollout(rpb.RolloutActionRequest(endpoint="emb", actor="e2e",
                                                                                reason="enough"))
            assert aborted.state == rpb.ABORTED
            await eventually(lambda: all(a.loop.version == 1 for a in agents), what="abort restores v1")
        finally:
            await stop_all(agents)
            restarted.stop()

    asyncio.run(scenario())
