"""Costs bounded at the edge (issue 22): one caller's hostile but legal calls cost the others nothing."""

from __future__ import annotations

import asyncio
import socket
import threading

import grpc
import pytest
from support import LAYERS, LightAgent, RunningControlPlane, eventually, rules, snapshot, stubs

from mixprec.cli.main import main
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


def reports_of(url: str, worker_id: str) -> list[tuple]:
    return [row for row in snapshot(url)["reports"] if row[2] == worker_id]


def test_a_report_flood_is_capped_and_the_rest_of_the_fleets_reports_are_stored(db_url):
    # A stream's bucket holds 10 reports and refills once in 1,000 s: the flood's 11th report is over it.
    running = RunningControlPlane(db_url, stream_limits={"max_reports_per_worker": 0.001})
    try:
        policies, fleet = stubs(running.address)
        policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
        policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", rules=rules(("layers.*.mlp.*", "fp8"))))
        hello = apb.Hello(endpoint="emb", worker_id="flood", layers=LAYERS, running_version=0)
        flood = [apb.AgentMessage(report=apb.Report(kind=apb.Report.QUALITY, version=0, report_id=f"r{i}",
                                                    metrics={"cosine_to_base": 0.5}, samples=1))
                 for i in range(2000)]
        stub = agent_pb2_grpc.AgentServiceStub(grpc.insecure_channel(running.address))
        for _ in stub.Connect(iter([apb.AgentMessage(hello=hello), *flood]), timeout=60):
            pass  # the stream ends once the server has read every message

        async def the_fleet_reports():
            agents = [LightAgent(running.address, "emb", f"honest-{i}").start() for i in range(3)]
            for agent in agents:
                await asyncio.wait_for(agent.loop.connected.wait(), 20)
            fleet.Activate(apb.ActivateRequest(endpoint="emb", version=1))
            await eventually(lambda: all(reports_of(db_url, f"honest-{i}") for i in range(3)), 30,
                             "every honest worker's report stored")
            for agent in agents:
                await agent.stop()

        asyncio.run(the_fleet_reports())
        assert len(reports_of(db_url, "flood")) == 10
    finally:
        running.stop()


def test_a_token_holds_a_bounded_number_of_distinct_worker_ids(db_url):
    running = RunningControlPlane(db_url, stream_limits={"max_worker_ids_per_token": 3})
    try:
        stubs(running.address)[0].CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))

        async def scenario():
            agents = [LightAgent(running.address, "emb", f"w{i}").start() for i in range(3)]
            for agent in agents:
                await asyncio.wait_for(agent.loop.connected.wait(), 20)
            refusal = await asyncio.to_thread(refused_hello, running.address,
                                              apb.Hello(endpoint="emb", worker_id="w-new", layers=LAYERS))
            assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "3 distinct worker ids of endpoint 'emb'" in refusal.details()
            assert "the limit is 3" in refusal.details()
            await agents[0].stop()  # a worker coming back under its id is no new id
            again = LightAgent(running.address, "emb", "w0").start()
            await asyncio.wait_for(again.loop.connected.wait(), 20)
            for agent in (again, *agents[1:]):
                await agent.stop()
            # Worker rows are written behind the streams: wait for them, then check that w-new has none.
            await eventually(lambda: len(snapshot(db_url)["workers"]) >= 3, 20, "the three workers' rows")

        asyncio.run(scenario())
        assert sorted(row[2] for row in snapshot(db_url)["workers"]) == ["w0", "w1", "w2"]
    finally:
        running.stop()


def test_a_token_runs_a_bounded_number_of_policy_resolutions_at_once(tmp_path):
    running = RunningControlPlane(f"sqlite:///{tmp_path / 'reads.db'}", resolution_limits={"per_token": 1})
    try:
        policies, _ = stubs(running.address)
        catalog = [f"layers.{i}.mlp.up_proj" for i in range(2000)]
        policies.CreateEndpoint(pb.CreateEndpointRequest(name="big", layers=catalog))
        # 200 rules over 2,000 layers: 400,000 pattern checks, legal, and seconds of work each.
        heavy = pb.ResolvePolicyRequest(endpoint="big", rules=rules(*[(f"layers.*{i}.mlp.*", "fp8")
                                                                      for i in range(200)]))
        calls = [policies.ResolvePolicy.future(heavy, timeout=120) for _ in range(3)]
        outcomes = []
        for call in calls:
            try:
                outcomes.append(call.result().valid)
            except grpc.RpcError as err:
                outcomes.append(err.code())
                assert "policy resolutions running; the limit is 1 at once" in err.details()
        assert True in outcomes and grpc.StatusCode.RESOURCE_EXHAUSTED in outcomes
        assert policies.ResolvePolicy(heavy, timeout=120).valid  # the slot is free again
    finally:
        running.stop()


def test_webhooks_to_loopback_link_local_and_private_addresses_are_refused(tmp_path, capsys):
    from mixprec.v1 import notify_pb2 as npb
    from mixprec.v1 import notify_pb2_grpc

    running = RunningControlPlane(f"sqlite:///{tmp_path / 'hooks.db'}", webhook_allow=["10.20.0.0/16"])
    try:
        stubs(running.address)[0].CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
        notify = notify_pb2_grpc.NotificationServiceStub(grpc.insecure_channel(running.address))
        before = snapshot(running.plane.db_url)
        for url, kind in [("http://127.0.0.1:6379/", "loopback"), ("http://169.254.169.254/latest/meta-data", "link-local"),
                          ("http://10.0.0.7/hook", "private"), ("http://[::1]:8080/", "loopback"),
                          ("http://[::ffff:127.0.0.1]/", "loopback"), ("http://localhost:6379/", "loopback"),
                          ("http://0.0.0.0:6379/", "unspecified"), ("http://100.64.0.1/", "not globally routable"), ("https://192.168.1.1/", "private")]:
            with pytest.raises(grpc.RpcError) as refused:
                notify.SetWebhook(npb.SetWebhookRequest(endpoint="emb", name="hook", url=url))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
            assert refused.value.details().startswith("url: ") and f"a {kind} address" in refused.value.details()
            assert "--webhook-allow" in refused.value.details()
        assert snapshot(running.plane.db_url) == before
        # The range the admin allowed, and names this machine cannot resolve (each delivery checks again).
        for name, url in (("inside", "http://10.20.3.4/hook"), ("outside", "https://hooks.invalid/T0/secret")):
            assert notify.SetWebhook(npb.SetWebhookRequest(endpoint="emb", name=name, url=url)).name == name
    finally:
        running.stop()
    assert main(["server", "--webhook-allow", "not-a-range", "--db", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert "--webhook-allow" in capsys.readouterr().err


def test_a_webhook_stored_before_the_check_is_not_delivered_to_loopback(tmp_path):
    receiver_hits: list[bytes] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.1)
    running = RunningControlPlane(f"sqlite:///{tmp_path / 'old.db'}",
                                  notifier={"interval": 0.05, "attempts": 1, "backoff": (0.05, 0.1)})
    try:
        policies, fleet = stubs(running.address)
        policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
        with running.plane._uow() as uow:  # as an older server let an admin store it
            uow.webhooks.put("emb", "old", f"http://127.0.0.1:{server.getsockname()[1]}/hook", ("rollback",), "admin")
            uow.commit()
        from mixprec.v1 import notify_pb2 as npb
        from mixprec.v1 import notify_pb2_grpc
        notify_pb2_grpc.NotificationServiceStub(grpc.insecure_channel(running.address)).TestWebhook(
            npb.TestWebhookRequest(endpoint="emb", name="old"))

        async def settled():
            def failed():
                return [e for e in fleet.ListAudit(apb.ListAuditRequest(endpoint="emb")).entries
                        if e.action == "notify.failed"]
            await eventually(failed, 20, "the delivery settled")
            return failed()[0]

        entry = asyncio.run(settled())
        assert "not sent to http://127.0.0.1" in entry.reason and "a loopback address" in entry.reason
        try:
            receiver_hits.append(server.accept()[0].recv(100))
        except OSError:
            pass
        assert receiver_hits == []
    finally:
        running.stop()
        server.close()
