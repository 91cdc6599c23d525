"""Hellos to an endpoint a replica already serves are written behind in batches, like ACKs; that
shortcut never accepts a worker the database would refuse."""

from __future__ import annotations

import asyncio

import grpc
from support import LightAgent, eventually, fleet_of, rules, stubs

from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import policy_pb2 as pb


def test_a_crowd_of_hellos_is_recorded_and_a_deleted_endpoint_takes_no_new_worker_and_keeps_none(control_plane):
    policies, fleet = stubs(control_plane.address)
    policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb"))

    async def scenario():
        first = LightAgent(control_plane.address, "emb", "w-00").start()  # learns the catalog, in the database
        await asyncio.wait_for(first.loop.connected.wait(), 10)
        policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=0, rules=rules(("*", "fp8"))))
        fleet.Activate(apb.ActivateRequest(endpoint="emb", version=1))
        crowd = [LightAgent(control_plane.address, "emb", f"w-{i:02d}").start() for i in range(1, 40)]
        await eventually(lambda: all(a.applied == [1] for a in [first, *crowd]), what="v1 everywhere")
        await eventually(lambda: len(fleet_of(fleet, "emb")) == 40, what="every hello recorded")
        status = fleet_of(fleet, "emb")
        assert all(w.connected and w.applied_version == w.last_ack_version == 1 for w in status.values())

        policies.DeleteEndpoint(pb.DeleteEndpointRequest(name="emb", reason="decommissioned"))
        late = LightAgent(control_plane.address, "emb", "w-late").start()
        await eventually(lambda: late.loop.fatal_error is not None, what="the late hello refused")
        assert late.loop.fatal_error.code() == grpc.StatusCode.NOT_FOUND and not late.applied
        # The streams already connected are closed too; each worker keeps the map it runs.
        await eventually(lambda: all(a.loop.fatal_error is not None for a in [first, *crowd]),
                         what="every connected stream closed")
        assert {a.loop.fatal_error.code() for a in [first, *crowd]} == {grpc.StatusCode.NOT_FOUND}
        assert "was deleted" in first.loop.fatal_error.details() or "does not exist" in first.loop.fatal_error.details()
        assert all(a.loop.version == 1 for a in [first, *crowd])
        for agent in [first, *crowd, late]:
            await agent.stop()

    asyncio.run(scenario())
