"""Webhooks: a failing rollout, a manual rollback and a NACK reach a local HTTP receiver (Slack-shaped
JSON, retried with backoff), each delivery lands in the audit log, and the CLI configures them."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from support import LAYERS, LightAgent, RunningControlPlane, eventually, rules, stubs

from mixprec.cli.main import main
from mixprec.localhost import free_port
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import notify_pb2 as npb
from mixprec.v1 import notify_pb2_grpc, rollout_pb2_grpc
from mixprec.v1 import policy_pb2 as pb
from mixprec.v1 import rollout_pb2 as rpb


class Receiver:
    """A real HTTP server on port 0 that records JSON bodies; `/flaky/...` answers 500 to its first two."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.failures_left = 2
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                failing = self.path.startswith("/flaky/") and receiver.failures_left > 0
                if failing:
                    receiver.failures_left -= 1
                else:
                    receiver.bodies.append(body)
                self.send_response(500 if failing else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> Counter:
        return Counter(b["mixprec"]["event"] for b in self.bodies)

    def body(self, event: str) -> dict:
        return next(b for b in self.bodies if b["mixprec"]["event"] == event)


@pytest.fixture
def receiver():
    running = Receiver()
    yield running
    running.server.shutdown()


def audit(fleet, action: str) -> list[dict]:
    entries = fleet.ListAudit(apb.ListAuditRequest(endpoint="emb")).entries
    return [json.loads(e.detail_json) | {"reason": e.reason} for e in entries if e.action == action]


def test_failing_rollout_rollback_and_nack_are_delivered_with_retries_and_audited(db_url, receiver, capsys):
    plane = RunningControlPlane(db_url, rollout_interval=0.05, webhook_allow=["127.0.0.0/8"],  # the receivers
                                notifier={"interval": 0.05, "attempts": 3, "backoff": (0.05, 0.2)})
    policies, fleet = stubs(plane.address)
    channel = grpc.insecure_channel(plane.address)
    try:
        policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
        for parent, rule in enumerate([("layers.0.mlp.*", "fp8"), ("*", "fp8"), ("layers.1.*", "fp8")]):
            policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=parent, rules=rules(rule)))
        fleet.Activate(apb.ActivateRequest(endpoint="emb", version=1))

        cli = ["--server", plane.address, "webhook"]
        secret_url = f"{receiver.url}/flaky/T000/B000/secret-part"
        assert main([*cli, "set", "emb", "team", "--url", secret_url]) == 0
        dead = f"http://127.0.0.1:{free_port()}/hooks/dead-secret"
        assert main([*cli, "set", "emb", "ops", "--url", dead, "--events", "rollout.rolled_back"]) == 0
        assert main([*cli, "set", "emb", "bad", "--url", receiver.url, "--events", "rollout.exploded"]) == 2
        assert main([*cli, "set", "emb", "bad", "--url", "ftp://example.org/x"]) == 2
        assert main([*cli, "set", "nope", "bad", "--url", receiver.url]) == 3
        err = capsys.readouterr().err
        assert "events" in err and "rollout.exploded" in err and "url" in err

        async def scenario():
            agents = [LightAgent(plane.address, "emb", "w-a").start(),
                      LightAgent(plane.address, "emb", "w-b", refuse={3}).start()]
            await eventually(lambda: all(a.applied[-1:] == [1] for a in agents), 20, "the fleet on v1")
            # Every layer FP8 costs the light agents 0.006 cosine: over the guardrail at the first step.
            rollout_pb2_grpc.RolloutServiceStub(channel).StartRollout(rpb.StartRolloutRequest(
                endpoint="emb", version=2, steps=[rpb.RolloutStep(percent=100)],
                guardrails=rpb.Guardrails(max_drop={"cosine_to_base": 0.001})))
            await eventually(lambda: receiver.events()["rollout.rolled_back"] == 1, 20, "the rolled-back webhook")
            fleet.Rollback(apb.RollbackRequest(endpoint="emb", reason="pager: bad numerics", to_base=True))
            await eventually(lambda: receiver.events()["rollback"] == 1, 20, "the manual rollback webhook")
            fleet.Activate(apb.ActivateRequest(endpoint="emb", version=3))
            await eventually(lambda: receiver.events()["worker.nack"] == 1, 20, "the NACK webhook")
            # A delivery is audited once its receiver has answered: a moment after it got the event.
            await eventually(lambda: {d["event"] for d in audit(fleet, "notify.delivered") if d["webhook"] == "team"}
                             >= {"rollout.start", "rollout.rolled_back", "rollback", "worker.nack"}, 20,
                             "every delivery to 'team' audited")
            await eventually(lambda: audit(fleet, "notify.failed"), 20, "the dead webhook to give up")
            for agent in agents:
                await agent.stop()

        asyncio.run(scenario())

        assert receiver.events() == Counter({"rollout.start": 1, "rollout.rolled_back": 1, "rollback": 1,
                                             "worker.nack": 1})  # each exactly once, nothing unsubscribed
        rolled_back = receiver.body("rollout.rolled_back")
        assert rolled_back["text"].startswith("[mixprec] Rollout rolled back on emb: rolled back at step 1")
        assert rolled_back["attachments"][0]["color"] == "danger"
        assert receiver.body("rollback")["mixprec"]["reason"] == "pager: bad numerics"
        nack = receiver.body("worker.nack")
        assert nack["mixprec"]["detail"] == {"worker": "w-b", "version": 3}
        assert "cannot run" in nack["text"]

        delivered = {d["event"]: d for d in audit(fleet, "notify.delivered") if d["webhook"] == "team"}
        assert set(delivered) == {"rollout.start", "rollout.rolled_back", "rollback", "worker.nack"}
        assert sum(d["attempts"] for d in delivered.values()) == 4 + 2  # the two 500s were retried
        (failed,) = audit(fleet, "notify.failed")
        assert failed["webhook"] == "ops" and failed["attempts"] == 3 and failed["status_code"] == 0
        assert "ConnectError" in failed["reason"] and "dead-secret" not in failed["reason"]

        listed = {w.name: w for w in notify_pb2_grpc.NotificationServiceStub(channel).ListWebhooks(
            npb.ListWebhooksRequest(endpoint="emb")).webhooks}
        assert listed["team"].url == f"{receiver.url}/…"  # the path of a webhook URL is its secret
        assert listed["team"].last_delivery.state == "delivered"
        assert listed["ops"].last_delivery.state == "failed" and listed["ops"].events == ["rollout.rolled_back"]
        assert main([*cli, "test", "emb", "team"]) == 0
        assert main([*cli, "delete", "emb", "ops"]) == 0
        capsys.readouterr()
        assert main([*cli, "list", "emb", "--output", "json"]) == 0
        assert [w["name"] for w in json.loads(capsys.readouterr().out)["webhooks"]] == ["team"]
        # An endpoint goes with its webhooks and their deliveries.
        policies.DeleteEndpoint(pb.DeleteEndpointRequest(name="emb", reason="retired"))
        assert main([*cli, "list", "emb"]) == 3
    finally:
        channel.close()
        plane.stop()
