"""Tokens and roles end to end: a control plane with --auth required, real tokens, the CLI's exit 6."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import LAYERS, LightAgent, RunningControlPlane, eventually, rules, snapshot, stubs

from controlplane.auth import Authenticator, Role, TokenService
from controlplane.storage.database import open_engine
from controlplane.storage.unit_of_work import unit_of_work_factory
from mixprec import transport
from mixprec.cli.main import main
from mixprec.errors import AlreadyExists, Unauthenticated
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc, auth_pb2, auth_pb2_grpc
from mixprec.v1 import policy_pb2 as pb


def _tokens(url):
    engine = open_engine(url)
    uow = unit_of_work_factory(engine)
    return engine, TokenService(uow), Authenticator(uow, cache_seconds=0)


def test_tokens_are_shown_once_stored_hashed_and_checked(db_url):
    engine, tokens, authenticator = _tokens(db_url)
    try:
        secret, info = tokens.create("ci", "operator", endpoint="search", expires_in=timedelta(days=1))
        assert secret.startswith("mxp_") and info.role == "operator" and info.endpoint == "search"
        stored = snapshot(db_url)["tokens"]
        assert len(stored) == 1 and secret not in repr(stored)  # only the hash is kept
        principal = authenticator.authenticate(secret)
        assert (principal.name, principal.role, principal.endpoint) == ("ci", Role.OPERATOR, "search")
        with pytest.raises(AlreadyExists):
            tokens.create("ci", "viewer")
        for bad in ("", "mxp_short", "x" * 10_000, secret[:-1] + ("A" if secret[-1] != "A" else "B")):
            with pytest.raises(Unauthenticated):
                authenticator.authenticate(bad)
        tokens.revoke("ci")
        with pytest.raises(Unauthenticated, match="'ci' was revoked"):
            authenticator.authenticate(secret)
        again, _ = tokens.create("ci", "viewer")  # a revoked name may be used again
        assert authenticator.authenticate(again).role is Role.VIEWER
        expired, _ = tokens.create("old", "viewer", expires_in=timedelta(seconds=1))
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE tokens SET expires_at = created_at WHERE name = 'old'"))
        with pytest.raises(Unauthenticated, match="'old' expired"):
            authenticator.authenticate(expired)
        assert [t.name for t in tokens.list(include_revoked=True)] == ["ci", "ci", "old"]
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """One control plane requiring tokens (SQLite), with a token per role made straight on the database."""
    url = f"sqlite:///{tmp_path_factory.mktemp('auth') / 'mixprec.db'}"
    engine, tokens, _ = _tokens(url)
    from controlplane.storage.database import upgrade

    upgrade(engine)
    made = {
        name: tokens.create(name, role, endpoint)[0]
        for name, role, endpoint in [
            ("root", "admin", ""), ("reader", "viewer", ""), ("ops", "operator", ""),
            ("ops-emb", "operator", "emb"), ("agents-emb", "agent", "emb"), ("other-agents", "agent", "emb"),
        ]
    }
    engine.dispose()
    running = RunningControlPlane(url, auth="required")
    policy, fleet = stubs(running.address, made["root"])
    policy.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
    policy.CreateEndpoint(pb.CreateEndpointRequest(name="other", layers=LAYERS))
    for name in ("emb", "other"):
        policy.CreatePolicy(pb.CreatePolicyRequest(endpoint=name, rules=rules(("layers.*.mlp.*", "fp8"))))
    yield running, made, url
    running.stop()


def _code(method, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        method(request)
    return err.value.code()


def test_calls_without_a_valid_token_are_unauthenticated(secured):
    running, made, url = secured
    before = snapshot(url)
    for token in (None, "mxp_" + "A" * 43, "garbage token", made["root"] + "x"):
        policy, fleet = stubs(running.address, token)
        assert _code(policy.ListEndpoints, pb.ListEndpointsRequest()) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(fleet.Activate, apb.ActivateRequest(endpoint="emb", version=1)) \
            == grpc.StatusCode.UNAUTHENTICATED
    assert snapshot(url) == before


def test_roles_and_scopes_decide_what_each_token_may_do(secured):
    running, made, url = secured
    reader_policy, reader_fleet = stubs(running.address, made["reader"])
    assert {e.name for e in reader_policy.ListEndpoints(pb.ListEndpointsRequest()).endpoints} == {"emb", "other"}
    before = snapshot(url)
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert _code(reader_fleet.Activate, apb.ActivateRequest(endpoint="emb", version=1)) == denied
    assert _code(reader_policy.CreatePolicy,
                 pb.CreatePolicyRequest(endpoint="emb", parent_version=1, rules=rules(("*", "fp8")))) == denied
    ops_policy, ops_fleet = stubs(running.address, made["ops"])
    assert _code(ops_policy.CreateEndpoint, pb.CreateEndpointRequest(name="new", layers=LAYERS)) == denied
    assert _code(ops_policy.DeleteEndpoint, pb.DeleteEndpointRequest(name="other", reason="x")) == denied
    scoped_policy, scoped_fleet = stubs(running.address, made["ops-emb"])
    assert [e.name for e in scoped_policy.ListEndpoints(pb.ListEndpointsRequest()).endpoints] == ["emb"]
    assert _code(scoped_fleet.Activate, apb.ActivateRequest(endpoint="other", version=1)) == denied
    assert _code(scoped_fleet.GetFleet, apb.GetFleetRequest(endpoint="other")) == denied
    agent_policy, _ = stubs(running.address, made["agents-emb"])
    assert _code(agent_policy.ListEndpoints, pb.ListEndpointsRequest()) == denied
    tokens = auth_pb2_grpc.TokenServiceStub(transport.channel(running.address, made["ops"]))
    assert _code(tokens.ListTokens, auth_pb2.ListTokensRequest()) == denied
    assert snapshot(url) == before
    # The scoped operator may act on its endpoint; the audit names the token, the claimed actor is a remark.
    scoped_fleet.Activate(apb.ActivateRequest(endpoint="emb", version=1, actor="root", reason="go"))
    entry = reader_fleet.ListAudit(apb.ListAuditRequest(endpoint="emb", limit=1)).entries[0]
    assert (entry.action, entry.actor) == ("activate", "ops-emb (remark: root)")


def test_agents_connect_only_to_the_endpoints_of_their_token(secured):
    running, made, _ = secured

    async def scenario():
        good = LightAgent(running.address, "emb", "w1", token=made["agents-emb"]).start()
        wrong_scope = LightAgent(running.address, "other", "w2", token=made["agents-emb"]).start()
        viewer = LightAgent(running.address, "emb", "w3", token=made["reader"]).start()
        try:
            await eventually(lambda: good.applied == [1], what="the agent token's worker applies v1")
            await eventually(lambda: wrong_scope.loop.fatal_error is not None and viewer.loop.fatal_error is not None,
                             what="both refusals")
            assert wrong_scope.loop.fatal_error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert viewer.loop.fatal_error.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            for agent in (good, wrong_scope, viewer):
                await agent.stop()

    asyncio.run(scenario())


def test_health_and_reflection_answer_probes_without_a_token(secured):
    running, _, _ = secured
    channel = grpc.insecure_channel(running.address)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answer = next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request])))
    assert "mixprec.v1.TokenService" in {s.name for s in answer.list_services_response.service}


def test_admin_tokens_and_endpoint_deletion_through_the_cli(secured, capsys, monkeypatch):
    running, made, url = secured

    def cli(*argv, token=None):
        if token:
            monkeypatch.setenv("MIXPREC_TOKEN", token)
        else:
            monkeypatch.delenv("MIXPREC_TOKEN", raising=False)
        code = main(["--server", running.address, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, _, err = cli("endpoint", "list")
    assert code == 6 and "UNAUTHENTICATED" in err
    code, _, err = cli("activate", "emb", "1", token=made["reader"])
    assert code == 6 and "PERMISSION_DENIED" in err and "role viewer" in err
    code, secret, _ = cli("token", "create", "temp-ops", "--role", "operator", "--expires", "1h", token=made["root"])
    assert code == 0 and secret.strip().startswith("mxp_")
    code, out, _ = cli("token", "list", token=made["root"])
    assert "temp-ops" in out and secret.strip() not in out
    assert cli("token", "revoke", "temp-ops", token=made["root"])[0] == 0
    assert cli("endpoint", "list", token=secret.strip())[0] == 6
    assert cli("endpoint", "create", "doomed", token=made["root"])[0] == 0
    code, _, err = cli("endpoint", "delete", "doomed", "--reason", "test", token=made["ops"])
    assert code == 6
    code, out, _ = cli("endpoint", "delete", "doomed", "--reason", "made by mistake", token=made["root"])
    assert code == 0 and "deleted endpoint doomed" in out
    assert cli("endpoint", "show", "doomed", token=made["root"])[0] == 3
    code, out, _ = cli("--output", "json", "audit", "doomed", token=made["root"])
    assert code == 3  # the endpoint is gone; its audit history stays in the table
    audit = snapshot(url)["audit_log"]
    assert any("endpoint.delete" in row and "made by mistake" in row and "root" in row for row in audit)


def test_first_admin_token_is_made_on_the_database_directly(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert main(["token", "create", "first-admin", "--role", "admin", "--db", url]) == 0
    secret = capsys.readouterr().out.strip()
    engine, _, authenticator = _tokens(url)
    try:
        assert authenticator.authenticate(secret).role is Role.ADMIN
    finally:
        engine.dispose()
    assert main(["token", "create", "Bad_Name", "--role", "admin", "--db", url]) == 2
    assert main(["token", "revoke", "nobody", "--db", url]) == 3


def test_a_worker_id_belongs_to_the_stream_that_holds_it(secured):
    running, made, url = secured
    engine, tokens, _ = _tokens(url)
    bound = tokens.create("held-worker", "agent", "emb", worker_id="held")[0]
    engine.dispose()

    def hello_stream(token, release: threading.Event, worker_id="held"):
        def outgoing():
            yield apb.AgentMessage(hello=apb.Hello(endpoint="emb", worker_id=worker_id, layers=LAYERS))
            release.wait(20)

        channel = transport.channel(running.address, token)
        return agent_pb2_grpc.AgentServiceStub(channel).Connect(outgoing())

    def refusal(call) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as err:
            next(iter(call))
        return err.value

    async def scenario():
        holder = LightAgent(running.address, "emb", "held", token=bound).start()
        await asyncio.wait_for(holder.loop.connected.wait(), 10)
        release = threading.Event()
        try:
            # No other token can claim it, not even the endpoint's shared agent token, so its reports can
            # never land on this worker.
            for other in ("other-agents", "agents-emb"):
                err = await asyncio.to_thread(refusal, hello_stream(made[other], release))
                assert err.code() == grpc.StatusCode.ALREADY_EXISTS
                assert "held by a live stream of another token" in err.details()
            # A worker's own token is for its own id only.
            err = await asyncio.to_thread(refusal, hello_stream(bound, release, worker_id="someone-else"))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "'held'" in err.details()
            # The worker's own token takes it over (the worker restarted): the old stream is ended.
            successor = hello_stream(bound, release)
            await asyncio.to_thread(successor.initial_metadata)
            await eventually(lambda: "took this worker id over" in holder.loop.last_error, what="old stream ended")
        finally:
            release.set()
            await holder.stop()

    asyncio.run(scenario())
