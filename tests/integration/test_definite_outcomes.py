"""Write calls with a definite outcome: nothing commits after the caller's deadline, and a call retried
with the same request id is applied once (SQLite and Postgres)."""

from __future__ import annotations

import socket
import time
from datetime import timedelta

import grpc
import pytest
from support import LAYERS, RunningControlPlane, rules, snapshot, stubs

from controlplane import domain
from controlplane.storage.database import open_engine, upgrade
from controlplane.storage.repositories import utcnow
from controlplane.storage.unit_of_work import unit_of_work_factory
from controlplane.storage.write_requests import RequestKey, WriteScope, current_scope
from mixprec.cli.main import main
from mixprec.errors import Unavailable
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import policy_pb2 as pb


def write_an_endpoint(url: str, scope: WriteScope, pause: float = 0.0) -> None:
    engine = open_engine(url)
    token = current_scope.set(scope)
    try:
        with unit_of_work_factory(engine)() as uow:
            uow.endpoints.add(domain.Endpoint("emb", "bf16", "", tuple(LAYERS), utcnow()))
            time.sleep(pause)  # the transaction outlives its caller's patience
            uow.commit()
    finally:
        current_scope.reset(token)
        engine.dispose()


def test_a_transaction_whose_deadline_passes_before_commit_writes_nothing(db_url):
    before = snapshot(db_url)
    with pytest.raises(Unavailable, match="deadline passed before committing; nothing was written"):
        write_an_endpoint(db_url, WriteScope.open(RequestKey("r-1", "CreateEndpoint"), time_remaining=0.3), pause=0.3)
    assert snapshot(db_url) == before
    write_an_endpoint(db_url, WriteScope.open(RequestKey("r-2", "CreateEndpoint"), time_remaining=30))
    assert [row[1] for row in snapshot(db_url)["endpoints"]] == ["emb"]
    assert [row[1] for row in snapshot(db_url)["write_requests"]] == ["r-2"]


def test_postgres_itself_refuses_a_commit_that_arrives_after_the_deadline(empty_pg_url):
    engine = open_engine(empty_pg_url)
    upgrade(engine)
    engine.dispose()
    before = snapshot(empty_pg_url)
    # The control plane's own clock says there is time left; the database's says the deadline has passed
    # (a COMMIT held up on the way): the trigger at COMMIT decides.
    late = WriteScope(RequestKey("r-late", "CreateEndpoint"), time.monotonic() + 30, utcnow() - timedelta(seconds=1))
    with pytest.raises(Unavailable, match="after its deadline"):
        write_an_endpoint(empty_pg_url, late)
    assert snapshot(empty_pg_url) == before


def test_a_retried_write_with_the_same_request_id_is_applied_once_and_answered_alike(control_plane, db_url):
    policies, fleet = stubs(control_plane.address)
    policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS, request_id="e-1"))
    again = policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS, request_id="e-1"))
    assert again.name == "emb"  # not ALREADY_EXISTS: it is the first call's answer
    create = pb.CreatePolicyRequest(endpoint="emb", parent_version=0, rules=rules(("layers.*", "fp8")),
                                    request_id="p-1")
    first, retried = policies.CreatePolicy(create), policies.CreatePolicy(create)
    assert first == retried and first.version == 1
    assert len(policies.ListPolicies(pb.ListPoliciesRequest(endpoint="emb")).versions) == 1
    # Without the key, the same retry is a second write (here refused by compare-and-swap).
    create.request_id = ""
    with pytest.raises(grpc.RpcError) as conflict:
        policies.CreatePolicy(create)
    assert conflict.value.code() == grpc.StatusCode.ABORTED

    for bad in ("x" * 101, "a\x00b"):
        with pytest.raises(grpc.RpcError) as refused:
            fleet.Activate(apb.ActivateRequest(endpoint="emb", version=1, request_id=bad))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in refused.value.details()
    assert snapshot(db_url)["activations"] == []


def test_the_cli_retries_safely_with_request_id(control_plane, capsys):
    policies, fleet = stubs(control_plane.address)
    policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
    for parent, match in enumerate(("layers.0.*", "layers.*")):
        policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=parent,
                                                     rules=rules((match, "fp8"))))
    for _ in range(2):
        assert main(["--server", control_plane.address, "activate", "emb", "2", "--request-id", "deploy-7"]) == 0
    outputs = capsys.readouterr().out.splitlines()
    assert outputs[0] == outputs[1] and "v0 -> v2" in outputs[0]
    audit = fleet.ListAudit(apb.ListAuditRequest(endpoint="emb")).entries
    assert [e.action for e in audit].count("activate") == 1
    # Without --request-id the CLI makes one up: a failure it cannot see the end of names it.
    assert main(["--server", "127.0.0.1:1", "activate", "emb", "1"]) == 5
    assert "retry with --request-id cli-" in capsys.readouterr().err


def test_deletes_token_and_webhook_writes_are_applied_once_per_request_id(control_plane, db_url, capsys):
    from mixprec.v1 import auth_pb2, auth_pb2_grpc, notify_pb2, notify_pb2_grpc

    channel = grpc.insecure_channel(control_plane.address)
    tokens, notify = auth_pb2_grpc.TokenServiceStub(channel), notify_pb2_grpc.NotificationServiceStub(channel)
    policies, fleet = stubs(control_plane.address)
    policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))

    hook = notify_pb2.SetWebhookRequest(endpoint="emb", name="chat", url="https://hooks.invalid/hook", request_id="w-1")
    assert notify.SetWebhook(hook) == notify.SetWebhook(hook)
    probe = notify_pb2.TestWebhookRequest(endpoint="emb", name="chat", request_id="w-3")
    notify.TestWebhook(probe)
    notify.TestWebhook(probe)
    assert sum("webhook.test" in row for row in snapshot(db_url)["audit_log"]) == 1
    drop_hook = notify_pb2.DeleteWebhookRequest(endpoint="emb", name="chat", request_id="w-2")
    notify.DeleteWebhook(drop_hook)
    notify.DeleteWebhook(drop_hook)  # answered alike, not NOT_FOUND
    assert notify.ListWebhooks(notify_pb2.ListWebhooksRequest(endpoint="emb")).webhooks == []

    create = auth_pb2.CreateTokenRequest(name="deployer", role="operator", request_id="t-1")
    first, retried = tokens.CreateToken(create), tokens.CreateToken(create)
    assert first.secret.startswith("mxp_") and retried.secret == ""  # the secret is never stored
    assert retried.token == first.token
    revoke = auth_pb2.RevokeTokenRequest(name="deployer", request_id="t-2")
    assert tokens.RevokeToken(revoke) == tokens.RevokeToken(revoke)
    listed = tokens.ListTokens(auth_pb2.ListTokensRequest(include_revoked=True)).tokens
    assert [t.name for t in listed] == ["deployer"]

    delete = pb.DeleteEndpointRequest(name="emb", reason="retired", request_id="d-1")
    assert policies.DeleteEndpoint(delete) == policies.DeleteEndpoint(delete)
    audit = snapshot(db_url)["audit_log"]
    assert sum("endpoint.delete" in row for row in audit) == 1

    cli = ["--server", control_plane.address, "token", "create", "ci", "--role", "viewer", "--request-id", "t-3"]
    assert main(cli) == 0
    assert capsys.readouterr().out.strip().startswith("mxp_")
    assert main(cli) == 4  # the retry cannot show the secret again and says what to do
    err = capsys.readouterr().err
    assert "already created token ci" in err and "mixprec token revoke ci" in err


def test_a_request_id_with_db_is_refused_by_name_before_anything_is_written(tmp_path, capsys):
    database = tmp_path / "direct.db"
    for argv in (["token", "create", "ops", "--role", "operator"], ["token", "revoke", "ops"]):
        assert main([*argv, "--db", f"sqlite:///{database}", "--request-id", "r-1"]) == 2
        assert "--request-id" in capsys.readouterr().err
    assert not database.exists()


def test_a_request_id_belongs_to_its_caller_and_endpoint_and_to_one_set_of_parameters(db_url):
    running = RunningControlPlane(db_url, auth="required")
    try:
        alice, _ = running.plane.tokens.create("alice", "operator")
        bob, _ = running.plane.tokens.create("bob", "operator", endpoint="a")
        admin, _ = running.plane.tokens.create("root", "admin")
        policies, _ = stubs(running.address, admin)
        for name in ("a", "b"):
            policies.CreateEndpoint(pb.CreateEndpointRequest(name=name, layers=LAYERS))
            for parent, match in enumerate(("layers.0.*", "layers.*")):
                policies.CreatePolicy(pb.CreatePolicyRequest(endpoint=name, parent_version=parent,
                                                             rules=rules((match, "fp8"))))
        _, as_alice = stubs(running.address, alice)
        _, as_bob = stubs(running.address, bob)
        first = as_alice.Activate(apb.ActivateRequest(endpoint="a", version=2, request_id="deploy-42"))
        # The same id on another endpoint is another call: applied, not answered with a's outcome.
        other = as_alice.Activate(apb.ActivateRequest(endpoint="b", version=2, request_id="deploy-42"))
        assert (first.endpoint, other.endpoint) == ("a", "b") and other.active_version == 2
        assert policies.GetEndpoint(pb.GetEndpointRequest(name="b")).active_version == 2
        # Another token's id is its own, even on the same endpoint.
        bobs = as_bob.Activate(apb.ActivateRequest(endpoint="a", version=1, request_id="deploy-42"))
        assert (bobs.previous_version, bobs.active_version) == (2, 1)
        # The same caller, method and endpoint with other parameters is refused, and nothing changes.
        before = snapshot(db_url)
        with pytest.raises(grpc.RpcError) as reused:
            as_alice.Activate(apb.ActivateRequest(endpoint="a", version=1, request_id="deploy-42"))
        assert reused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request id reused with other parameters" in reused.value.details()
        assert snapshot(db_url) == before
        # ... while the same parameters are answered as the first time.
        assert as_alice.Activate(apb.ActivateRequest(endpoint="a", version=2, request_id="deploy-42")) == first
    finally:
        running.stop()


def test_a_retry_after_a_lost_reply_gets_the_first_answer(db_url):
    # A Redis that takes connections and never answers: the change's publish outlasts the caller's
    # deadline, so the call's reply is lost after its write committed.
    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(16)
    running = RunningControlPlane(db_url, redis_url=f"redis://127.0.0.1:{stalled.getsockname()[1]}/0")
    try:
        policies, fleet = stubs(running.address)
        policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
        policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=0, rules=rules(("layers.*", "fp8"))))
        call = apb.ActivateRequest(endpoint="emb", version=1, request_id="deploy-9")
        with pytest.raises(grpc.RpcError) as lost:
            fleet.Activate(call, timeout=1.5)
        assert lost.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert [row[2] for row in snapshot(db_url)["activations"]] == [1]  # it was applied; only the reply was lost
        retried = fleet.Activate(call, timeout=30)
        assert (retried.endpoint, retried.previous_version, retried.active_version) == ("emb", 0, 1)
        assert [e.action for e in fleet.ListAudit(apb.ListAuditRequest(endpoint="emb")).entries].count("activate") == 1
    finally:
        running.stop()
        stalled.close()
