"""Costs bounded at the edge (issue 22): one caller's hostile but legal calls cost the others nothing."""

from __future__ import annotations

import threading

import grpc
import pytest
from support import rules, snapshot, stubs

from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc
from mixprec.v1 import policy_pb2 as pb

BIG_CATALOG = [f"layers.{i}.mlp.up_proj" for i in range(20_000)]
HOSTILE_CATALOG = [f"layers.{i}.mlp.xx_proj" for i in range(20_000)]


def refused_hello(address: str, hello: apb.Hello) -> grpc.RpcError:
    stub = agent_pb2_grpc.AgentServiceStub(grpc.insecure_channel(address))
    with pytest.raises(grpc.RpcError) as err:
        for _ in stub.Connect(iter([apb.AgentMessage(hello=hello)]), timeout=120):
            pass
    return err.value


def test_hostile_hellos_with_a_20000_name_catalog_do_not_hold_up_activations(control_plane, db_url):
    policies, fleet = stubs(control_plane.address)
    policies.CreateEndpoint(pb.CreateEndpointRequest(name="big", layers=BIG_CATALOG))
    for parent, match in enumerate(("layers.1.*", "layers.2.*")):
        policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="big", parent_version=parent, rules=rules((match, "fp8"))))
    stop = threading.Event()
    answers: list[grpc.RpcError] = []

    def hostile_worker(n: int) -> None:  # one refused hello after another, as fast as they are answered
        while not stop.is_set():
            answers.append(refused_hello(control_plane.address, apb.Hello(
                endpoint="big", worker_id=f"hostile-{n}", layers=HOSTILE_CATALOG)))

    hostiles = [threading.Thread(target=hostile_worker, args=(n,)) for n in range(2)]
    for thread in hostiles:
        thread.start()
    try:
        for version in (1, 2, 1):  # each activation needs the endpoint's row lock the hellos used to hold
            done = fleet.Activate(apb.ActivateRequest(endpoint="big", version=version), timeout=20)
            assert done.active_version == version
    finally:
        stop.set()
        for thread in hostiles:
            thread.join(timeout=300)
    assert answers and all(a.code() == grpc.StatusCode.FAILED_PRECONDITION for a in answers)
    assert "missing 20000: layers.0.mlp.up_proj" in answers[0].details()
    assert "extra 20000: layers.0.mlp.xx_proj" in answers[0].details()
    assert not [row for row in snapshot(db_url)["workers"] if "hostile" in repr(row)]
