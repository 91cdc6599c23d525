"""Every hostile input reproduced in issue 11, one test each: a clear INVALID_ARGUMENT or
RESOURCE_EXHAUSTED naming the field and the limit, nothing written, and no other caller harmed."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import threading
import time
from datetime import timedelta

import grpc
import pytest
import sqlalchemy as sa
from support import ALIAS_BOMB, LAYERS, LightAgent, RunningControlPlane, eventually, rules, snapshot, stubs

from controlplane import domain
from controlplane.push.recorder import FleetRecorder
from controlplane.services.fleet import FleetService
from controlplane.storage.database import open_engine, upgrade
from controlplane.storage.repositories import utcnow
from controlplane.storage.unit_of_work import unit_of_work_factory
from mixprec.cli.main import main
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc, rollout_pb2_grpc
from mixprec.v1 import policy_pb2 as pb
from mixprec.v1 import rollout_pb2 as rpb

HELLO_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def pg_plane(postgres):
    """One control plane on Postgres (where NUL bytes and 32-bit overflows used to leak SQL)."""
    url = postgres.create()
    engine = open_engine(url)
    upgrade(engine)
    engine.dispose()
    # A short hello timeout keeps the no-hello test quick; long enough that the other streams' hellos,
    # sent at once, never miss it on a loaded machine.
    running = RunningControlPlane(url, rollout_interval=0.05, stream_limits={"hello_timeout": HELLO_TIMEOUT})
    policy, fleet = stubs(running.address)
    policy.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS, model="minilm"))
    policy.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", rules=rules(("layers.*.mlp.*", "fp8"))))
    running.policy, running.fleet, running.url = policy, fleet, url
    running.rollouts = rollout_pb2_grpc.RolloutServiceStub(grpc.insecure_channel(running.address))
    yield running
    running.stop()
    postgres.drop(url)


def refused(call, request, code=grpc.StatusCode.INVALID_ARGUMENT) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call(request)
    assert err.value.code() == code, err.value.details()
    details = err.value.details()
    assert "SELECT" not in details and "INSERT" not in details and "Traceback" not in details
    return details


def test_nul_bytes_in_any_text_are_invalid_arguments(pg_plane):
    before = snapshot(pg_plane.url)
    p, f = pg_plane.policy, pg_plane.fleet
    assert "actor" in refused(f.Activate, apb.ActivateRequest(endpoint="emb", version=1, actor="a\x00b"))
    assert "reason" in refused(f.Rollback, apb.RollbackRequest(endpoint="emb", reason="oops\x00"))
    assert "message" in refused(p.CreatePolicy, pb.CreatePolicyRequest(
        endpoint="emb", parent_version=1, rules=rules(("*", "fp8")), message="m\x00"))
    assert "model: contains a NUL" in refused(p.CreateEndpoint, pb.CreateEndpointRequest(name="x", model="\x00"))
    assert snapshot(pg_plane.url) == before


def test_long_actor_model_and_address_name_their_limits(pg_plane):
    before = snapshot(pg_plane.url)
    details = refused(pg_plane.fleet.Activate, apb.ActivateRequest(endpoint="emb", version=1, actor="a" * 201))
    assert "actor: is 201 characters long; the limit is 100" in details
    details = refused(pg_plane.policy.CreateEndpoint, pb.CreateEndpointRequest(name="x", model="m" * 201))
    assert "model: is 201 characters long; the limit is 200" in details
    hello = apb.Hello(endpoint="emb", worker_id="w", layers=LAYERS, inference_address="h" * 201)
    assert "hello.inference_address" in stream_refusal(pg_plane.address, [apb.AgentMessage(hello=hello)])
    assert snapshot(pg_plane.url) == before


def test_versions_and_ids_beyond_32_bits_are_refused(pg_plane, capsys):
    before = snapshot(pg_plane.url)
    details = refused(pg_plane.fleet.Activate, apb.ActivateRequest(endpoint="emb", version=4294967295))
    assert "version: is 4294967295; the limit is 2147483647" in details
    assert "id: is" in refused(pg_plane.rollouts.GetRollout, rpb.GetRolloutRequest(endpoint="emb", id=2**63))
    hello = apb.Hello(endpoint="emb", worker_id="w", layers=LAYERS, running_version=2**32 - 1)
    assert "hello.running_version" in stream_refusal(pg_plane.address, [apb.AgentMessage(hello=hello)])
    for argv in (["activate", "emb", "4294967295"], ["activate", "--", "emb", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            main(["--server", pg_plane.address, *argv])
        assert exit_.value.code == 2 and "out of range" in capsys.readouterr().err
    assert snapshot(pg_plane.url) == before


def test_deeply_nested_artifacts_and_garbage_bytes_are_invalid(pg_plane):
    before = snapshot(pg_plane.url)
    nested = "[" * 100_000 + "]" * 100_000
    details = refused(pg_plane.policy.CreatePolicy, pb.CreatePolicyRequest(
        endpoint="emb", parent_version=1, rules=rules(("*", "fp8")), artifact_json=nested))
    assert "artifact_json: nests 100000 levels deep; the limit is 32" in details
    channel = grpc.insecure_channel(pg_plane.address)
    raw = channel.unary_unary("/mixprec.v1.PolicyService/CreateEndpoint")
    for garbage in (b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\x0f", bytes(range(256))):
        assert "not a valid protobuf message" in refused(raw, garbage)
    assert snapshot(pg_plane.url) == before


def test_huge_globs_are_refused_and_leave_no_compiled_patterns_behind(pg_plane):
    cache_before = fnmatch._compile_pattern.cache_info().currsize
    started = time.process_time()
    details = refused(pg_plane.policy.ResolvePolicy, pb.ResolvePolicyRequest(
        endpoint="emb", rules=[pb.Rule(match="*a" * 1_900_000, precision="fp8")]))
    assert "rules[0].match: is 3800000 characters long; the limit is 256" in details
    for i in range(300):  # distinct legal patterns: matched without a process-wide cache of them
        pg_plane.policy.ResolvePolicy(pb.ResolvePolicyRequest(
            endpoint="emb", rules=[pb.Rule(match=f"layers.*.mlp.*{'?' * (i % 40)}*", precision="fp8")]))
    assert fnmatch._compile_pattern.cache_info().currsize == cache_before
    assert time.process_time() - started < 30  # generous: the refusal is instant, the 300 resolves are small


def test_giant_layer_names_are_refused_and_listing_stays_small(pg_plane):
    before = snapshot(pg_plane.url)
    details = refused(pg_plane.policy.CreateEndpoint, pb.CreateEndpointRequest(name="big", layers=["a" * 1_000_000]))
    assert "layers[0]: is 1000000 characters long; the limit is 200" in details
    assert snapshot(pg_plane.url) == before
    listed = pg_plane.policy.ListEndpoints(pb.ListEndpointsRequest()).endpoints
    assert [(e.name, e.layer_count, list(e.layers)) for e in listed][0] == ("emb", len(LAYERS), [])


def test_a_huge_step_timeout_is_refused(pg_plane, capsys):
    details = refused(pg_plane.rollouts.StartRollout, rpb.StartRolloutRequest(
        endpoint="emb", version=1, guardrails=rpb.Guardrails(step_timeout_seconds=1e14)))
    assert "guardrails.step_timeout_seconds: is 1e+14; it must be between 0 and 604800" in details
    code = main(["--server", pg_plane.address, "rollout", "start", "emb", "1", "--step-timeout", "1e14"])
    assert code == 2 and "step_timeout_seconds" in capsys.readouterr().err


def test_one_broken_rollout_is_failed_and_the_others_go_on(pg_plane):
    """A rollout stored before the limits existed (a 1e14 s timeout) must not stop another endpoint's."""
    p = pg_plane.policy
    for name in ("broken", "fine"):
        p.CreateEndpoint(pb.CreateEndpointRequest(name=name, layers=LAYERS))
        p.CreatePolicy(pb.CreatePolicyRequest(endpoint=name, rules=rules(("layers.0.*", "fp8"))))
        pg_plane.fleet.Activate(apb.ActivateRequest(endpoint=name, version=1))
        p.CreatePolicy(pb.CreatePolicyRequest(endpoint=name, parent_version=1, rules=rules(("*", "fp8"))))

    async def scenario():
        agent = LightAgent(pg_plane.address, "fine", "w1").start()
        await eventually(lambda: agent.applied == [1], what="fine on v1")
        for name in ("broken", "fine"):
            pg_plane.rollouts.StartRollout(rpb.StartRolloutRequest(
                endpoint=name, version=2, steps=[rpb.RolloutStep(percent=100)],
                guardrails=rpb.Guardrails(max_drop={"cosine_to_base": 0.5}, step_timeout_seconds=5)))
        engine = open_engine(pg_plane.url)
        with engine.begin() as conn:  # what an unchecked server stored before
            conn.execute(sa.text(
                "UPDATE rollouts SET guardrails = CAST(:g AS JSON) WHERE endpoint_id = "
                "(SELECT id FROM endpoints WHERE name = 'broken')"),
                {"g": json.dumps({"max_drop": {}, "min_throughput_ratio": 0, "reports_per_step": 1,
                                  "bake_seconds": 0, "max_failed_checks": 0, "step_timeout_seconds": 1e14})})
        engine.dispose()

        def state(name):
            return pg_plane.rollouts.GetRollout(rpb.GetRolloutRequest(endpoint=name))

        await eventually(lambda: state("broken").state == rpb.FAILED, timeout=20, what="broken marked failed")
        assert "could not drive it (OverflowError" in state("broken").message
        await eventually(lambda: state("fine").state == rpb.SUCCEEDED, timeout=20, what="fine succeeds")
        await agent.stop()

    asyncio.run(scenario())


def stream_refusal(address: str, messages, wait: float = 0) -> str:
    """Opens a Connect stream, sends `messages` (then keeps it open `wait` s); the server's refusal."""

    def outgoing():
        yield from messages
        time.sleep(wait)

    stub = agent_pb2_grpc.AgentServiceStub(grpc.insecure_channel(address))
    with pytest.raises(grpc.RpcError) as err:
        for _ in stub.Connect(outgoing(), timeout=30):
            pass
    return f"{err.value.code().name}: {err.value.details()}"


def test_a_stream_without_a_hello_is_closed(pg_plane):
    started = time.monotonic()
    assert stream_refusal(pg_plane.address, [], wait=10).startswith(f"DEADLINE_EXCEEDED: no hello within {HELLO_TIMEOUT:g} s")
    assert time.monotonic() - started < HELLO_TIMEOUT + 5


def test_reports_over_the_limits_or_on_versions_never_sent_are_not_recorded(pg_plane):
    p = pg_plane.policy
    p.CreateEndpoint(pb.CreateEndpointRequest(name="reports", layers=LAYERS))
    hello = apb.Hello(endpoint="reports", worker_id="forger", layers=LAYERS, running_version=0)
    forged = [apb.Report(kind=apb.Report.QUALITY, version=1, metrics={"cosine_to_base": 0.1}),
              apb.Report(kind=apb.Report.QUALITY, version=2**32 - 1),
              apb.Report(kind=apb.Report.QUALITY, version=0, metrics={"x" * 100: 1.0}),
              apb.Report(kind=apb.Report.QUALITY, version=0, metrics={"cosine_to_base": float("nan")})]
    honest = apb.Report(kind=apb.Report.QUALITY, version=0, metrics={"cosine_to_base": 1.0}, samples=3)
    messages = [apb.AgentMessage(hello=hello), *(apb.AgentMessage(report=r) for r in forged),
                apb.AgentMessage(report=honest)]
    done = threading.Event()

    def outgoing():
        yield from messages
        done.wait(10)

    stub = agent_pb2_grpc.AgentServiceStub(grpc.insecure_channel(pg_plane.address))
    call = stub.Connect(outgoing())
    try:
        def forgers_reports():
            return [row for row in snapshot(pg_plane.url)["reports"] if "forger" in row]

        deadline = time.monotonic() + 10
        while not forgers_reports() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # a further flush would have brought any forged report too
        bodies = forgers_reports()
        assert len(bodies) == 1 and "'samples': 3" in repr(bodies[0]), bodies
    finally:
        done.set()
        call.cancel()


def test_one_bad_record_never_costs_the_batch(pg_plane):
    """The recorder writes a refused batch record by record: good records land, the bad one alone is dropped."""
    engine = open_engine(pg_plane.url)
    fleet = FleetService(unit_of_work_factory(engine))
    fleet.worker_connected("emb", "rec-a", LAYERS, "r", 0, {}, "")
    fleet.worker_connected("emb", "rec-b", LAYERS, "r", 0, {}, "")
    recorder = FleetRecorder(fleet)
    now = utcnow()
    recorder.update(domain.WorkerUpdate("emb", "rec-a", last_ack_version=1))
    recorder.report(domain.ReportRecord("emb", "rec-a", 1, "quality", {"samples": 3}, now))
    recorder.report(domain.ReportRecord("emb", "rec-b", 2**32 - 1, "quality", {"samples": 4}, now))  # int4 overflow
    recorder.report(domain.ReportRecord("emb", "rec-b", 1, "quality", {"samples": 5}, now + timedelta(seconds=1)))
    asyncio.run(recorder.flush())
    rows = [r for r in snapshot(pg_plane.url)["reports"] if "rec-" in repr(r)]
    engine.dispose()
    assert sorted(r[2] for r in rows) == ["rec-a", "rec-b"] and all(r[3] == 1 for r in rows)
    assert pg_plane.fleet.GetFleet(apb.GetFleetRequest(endpoint="emb")).workers[0].last_ack_version == 1


def test_unexpected_errors_answer_internal_with_an_id_and_nothing_else(pg_plane, monkeypatch, caplog):
    def broken():
        raise RuntimeError("SELECT secret FROM tokens WHERE x = 'params'")

    monkeypatch.setattr(pg_plane.plane.policies, "list_endpoints", broken)
    details = refused(pg_plane.policy.ListEndpoints, pb.ListEndpointsRequest(), grpc.StatusCode.INTERNAL)
    assert details.startswith("internal error ") and "secret" not in details
    incident = details.split()[2].rstrip(";")
    assert any(incident in r.getMessage() for r in caplog.records)


def test_cli_bad_files_and_numbers_exit_2_and_write_nothing(pg_plane, tmp_path, capsys):
    before = snapshot(pg_plane.url)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("rules:\n  - {match: 'layers.*', precision: fp8}  # caf\xe9\n".encode("latin-1"))
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"# " + b"x" * 10_000_000 + b"\n")
    deep = tmp_path / "deep.yaml"  # used to raise RecursionError with a traceback
    deep.write_text("rules: " + "[" * 100_000 + "]" * 100_000 + "\n")
    bomb = tmp_path / "bomb.yaml"  # used to take 42 s and 2.2 GB before a MemoryError
    bomb.write_text(ALIAS_BOMB)
    wide = tmp_path / "wide.yaml"  # few aliases, but 2^12 copies of a 30,000-item list
    wide.write_text("a0: &a0 [" + ", ".join(["x"] * 30_000) + "]\n"
                    + "".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]\n" for i in range(1, 13)) + "rules: *a12\n")
    server = ["--server", pg_plane.address]
    for argv, says in [
        (["policy", "create", "emb", "-f", str(latin1), "--parent", "1"], "not UTF-8"),
        (["policy", "create", "emb", "-f", str(huge), "--parent", "1"], "larger than the limit"),
        (["policy", "create", "emb", "-f", "/dev/null", "--parent", "1"], "no rules and no kv_cache"),
        (["policy", "create", "emb", "-f", str(deep), "--parent", "1"], "nests deeper than the limit of 32 levels"),
        (["policy", "create", "emb", "-f", str(bomb), "--parent", "1"], "uses more aliases (*name) than the limit"),
        (["policy", "validate", "emb", "-f", str(wide)], "expands to more nodes than the limit of 100000"),
    ]:
        assert main([*server, *argv]) == 2
        assert says in capsys.readouterr().err
    for argv in (["policy", "create", "emb", "-f", str(latin1), "--parent", "99999999999"],
                 ["activate", "--", "emb", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            main([*server, *argv])
        assert exit_.value.code == 2 and "out of range" in capsys.readouterr().err
    assert snapshot(pg_plane.url) == before


def test_streams_per_token_are_capped(tmp_path):
    url = f"sqlite:///{tmp_path / 'cap.db'}"
    running = RunningControlPlane(url, stream_limits={"max_streams_per_token": 2, "hello_timeout": 5})
    try:
        stubs(running.address)[0].CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))

        async def scenario():
            agents = [LightAgent(running.address, "emb", f"w{i}").start() for i in range(2)]
            for agent in agents:
                await asyncio.wait_for(agent.loop.connected.wait(), 10)
            details = await asyncio.to_thread(
                stream_refusal, running.address,
                [apb.AgentMessage(hello=apb.Hello(endpoint="emb", worker_id="w9", layers=LAYERS))])
            assert details.startswith("RESOURCE_EXHAUSTED: token 'anonymous' has 2 streams open here")
            for agent in agents:
                await agent.stop()

        asyncio.run(scenario())
    finally:
        running.stop()
