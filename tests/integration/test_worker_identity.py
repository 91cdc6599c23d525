"""Worker identity across replicas: two control planes over one Postgres (with Redis, and without),
real tokens, real streams. A worker id belongs to one live stream anywhere; revoking a token ends its
streams and dashboard sessions on every replica and frees their worker ids."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
from datetime import timedelta

import grpc
import pytest
import sqlalchemy as sa
from support import LAYERS, LightAgent, RunningControlPlane, eventually, fleet_of, rules, stubs

from controlplane.auth import Authenticator, Principal, Role, TokenService
from controlplane.services.identity import Claim, WorkerIdentity, issued_token_name
from controlplane.storage.database import open_engine, upgrade
from controlplane.storage.unit_of_work import unit_of_work_factory
from mixprec import policy as lang
from mixprec import transport
from mixprec.cli.main import main
from mixprec.errors import AlreadyExists, PermissionDenied
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc, auth_pb2, auth_pb2_grpc
from mixprec.v1 import policy_pb2 as pb

TOKENS = [  # name, role, endpoint, worker id, bootstrap
    ("root", "admin", "", "", False), ("ops", "operator", "", "", False), ("watcher", "viewer", "", "", False),
    ("agents", "agent", "emb", "", False), ("other-agents", "agent", "emb", "", False),
    ("w1-token", "agent", "emb", "w1", False), ("boot", "agent", "emb", "", True),
]


def _token_service(url):
    engine = open_engine(url)
    uow = unit_of_work_factory(engine)
    return engine, TokenService(uow), Authenticator(uow, cache_seconds=0)


def _replicas(url, redis_url, **options):
    engine, tokens, _ = _token_service(url)
    upgrade(engine)
    made = {name: tokens.create(name, role, endpoint, worker_id=worker, bootstrap=boot)[0]
            for name, role, endpoint, worker, boot in TOKENS}
    engine.dispose()
    # Polling is slowed to a minute: a stream is ended by the session watch, never by an endpoint re-read.
    one = RunningControlPlane(url, auth="required", redis_url=redis_url, poll_interval=60)
    two = RunningControlPlane(url, auth="required", redis_url=redis_url, poll_interval=60, **options)
    policy, _ = stubs(one.address, made["root"])
    policy.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
    policy.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", rules=rules(("layers.*.mlp.*", "fp8"))))
    return one, two, made


@pytest.fixture
def replicas(empty_pg_url, redis_url):
    one, two, made = _replicas(empty_pg_url, redis_url)
    yield one, two, made, empty_pg_url
    one.stop()
    two.stop()


def hello_stream(address, token, worker_id, release: threading.Event):
    def outgoing():
        yield apb.AgentMessage(hello=apb.Hello(endpoint="emb", worker_id=worker_id, layers=LAYERS,
                                               inference_address="10.6.6.6:1"))
        release.wait(3)  # an accepted stream stays open this long

    return agent_pb2_grpc.AgentServiceStub(transport.channel(address, token)).Connect(outgoing(), timeout=10)


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        next(iter(call))
    return err.value


def test_a_live_worker_id_cannot_be_claimed_through_another_replica(replicas):
    one, two, made, _ = replicas

    async def scenario():
        holder = LightAgent(one.address, "emb", "w1", token=made["agents"]).start()
        await asyncio.wait_for(holder.loop.connected.wait(), 10)
        release = threading.Event()
        try:
            # Replica two sees the lease replica one holds: neither the holder's shared token nor another
            # agent token of the endpoint may claim the id there.
            for token in ("agents", "other-agents"):
                err = await asyncio.to_thread(refusal, hello_stream(two.address, made[token], "w1", release))
                assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err.details()
                assert "held by a live stream of another token" in err.details()
            # The impersonator left no trace: the fleet shows the real worker, not its fake address.
            _, fleet = stubs(two.address, made["root"])
            worker = fleet_of(fleet, "emb")["w1"]
            assert worker.connected and worker.inference_address != "10.6.6.6:1"
            assert holder.loop.connected.is_set() and not holder.loop.last_error
        finally:
            release.set()
            await holder.stop()

    asyncio.run(scenario())


def test_a_worker_restarting_through_another_replica_takes_its_own_id_over(replicas):
    one, two, made, _ = replicas

    async def scenario():
        holder = LightAgent(one.address, "emb", "w1", token=made["w1-token"]).start()
        await asyncio.wait_for(holder.loop.connected.wait(), 10)
        release = threading.Event()
        try:
            err = await asyncio.to_thread(refusal, hello_stream(two.address, made["w1-token"], "w2", release))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "belongs to worker id 'w1'" in err.details()
            holder.loop._backoff.initial = holder.loop._backoff.maximum = 30  # the old process stays away
            successor = hello_stream(two.address, made["w1-token"], "w1", release)
            await asyncio.to_thread(successor.initial_metadata)
            # Replica one ends its stream: its lease now names the stream on replica two.
            await eventually(lambda: holder.loop.last_error.startswith("ABORTED") and "taken over" in
                             holder.loop.last_error, what="old stream ended on replica one")
        finally:
            release.set()
            await holder.stop()

    asyncio.run(scenario())


def test_an_admin_takes_a_worker_id_over_audited_wherever_its_stream_is(replicas, monkeypatch, capsys):
    one, two, made, url = replicas

    def cli(*argv, token="root"):
        monkeypatch.setenv("MIXPREC_TOKEN", made[token])
        code = main(["--server", two.address, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    async def scenario():
        holder = LightAgent(one.address, "emb", "w1", token=made["w1-token"]).start()
        await asyncio.wait_for(holder.loop.connected.wait(), 10)
        try:
            code, _, err = await asyncio.to_thread(cli, "takeover", "emb", "w1", "--reason", "x", token="ops")
            assert code == 6 and "PERMISSION_DENIED" in err
            code, _, err = await asyncio.to_thread(cli, "takeover", "emb", "w1", "--reason", " ")
            assert code == 2 and "reason" in err
            code, _, err = await asyncio.to_thread(cli, "takeover", "emb", "nobody", "--reason", "typo")
            assert code == 3
            code, out, _ = await asyncio.to_thread(cli, "takeover", "emb", "w1", "--reason", "laptop stolen")
            assert code == 0 and "its live stream is being closed" in out and "w1-token" in out
            # Its stream on replica one ends, and its token no longer lets it back in.
            await eventually(lambda: holder.loop.last_error.startswith("UNAUTHENTICATED"), what="holder locked out")
            for bad in (["--role", "viewer", "--worker-id", "w1"], ["--role", "agent", "--worker-id", "w1"]):
                code, _, err = await asyncio.to_thread(cli, "token", "create", "w1-new", *bad)
                assert code == 2 and ("worker_id" in err or "endpoint" in err), err
            code, fresh, _ = await asyncio.to_thread(cli, "token", "create", "w1-new", "--role", "agent",
                                                     "--endpoint", "emb", "--worker-id", "w1")
            fresh = fresh.strip()
            assert code == 0 and fresh, fresh
            code, listed, _ = await asyncio.to_thread(cli, "--output", "json", "token", "list")
            assert code == 0
            assert {"w1-new": "w1", "boot": "(bootstrap)", "agents": "*"}.items() <= \
                {t["name"]: t["worker"] for t in json.loads(listed)}.items()
            successor = LightAgent(two.address, "emb", "w1", token=fresh).start()
            await asyncio.wait_for(successor.loop.connected.wait(), 10)
            await successor.stop()
        finally:
            await holder.stop()

    asyncio.run(scenario())
    _, fleet = stubs(one.address, made["root"])
    audit = fleet.ListAudit(apb.ListAuditRequest(endpoint="emb")).entries
    (entry,) = [e for e in audit if e.action == "worker.takeover"]
    assert entry.actor == "root" and entry.reason == "laptop stolen" and '"w1-token"' in entry.detail_json


@pytest.mark.parametrize("fan_out", ["redis", "poll"])
def test_revoking_a_token_ends_its_streams_and_sessions_on_every_replica(empty_pg_url, redis_url, fan_out):
    one, two, made = _replicas(empty_pg_url, redis_url if fan_out == "redis" else None, http_listen="127.0.0.1:0")
    access = two.plane.dashboard.dashboard.access
    try:
        async def scenario():
            session, _ = await asyncio.to_thread(access.log_in, made["watcher"])
            here = LightAgent(one.address, "emb", "w1", token=made["agents"]).start()
            there = LightAgent(two.address, "emb", "w2", token=made["agents"]).start()
            agents = (here, there)
            for agent in agents:
                await asyncio.wait_for(agent.loop.connected.wait(), 10)
            tokens = auth_pb2_grpc.TokenServiceStub(transport.channel(one.address, made["root"]))
            for name in ("agents", "watcher"):
                await asyncio.to_thread(tokens.RevokeToken, auth_pb2.RevokeTokenRequest(name=name))
            # Within the 5 s the README promises, on the replica that revoked it and on the other one.
            await eventually(lambda: all(a.loop.last_error.startswith("UNAUTHENTICATED") for a in agents),
                             timeout=5, what="both streams ended")
            await eventually(lambda: access.sessions.get(session.id) is None, timeout=5, what="dashboard session")
            for agent in agents:
                await agent.stop()
            # Their worker ids are free: the legitimate worker with a new token connects at once.
            fresh = tokens.CreateToken(auth_pb2.CreateTokenRequest(name="agents-new", role="agent",
                                                                   endpoint="emb")).secret
            successor = LightAgent(two.address, "emb", "w1", token=fresh).start()
            await asyncio.wait_for(successor.loop.connected.wait(), 10)
            await successor.stop()

        asyncio.run(scenario())
    finally:
        one.stop()
        two.stop()


def test_a_bootstrap_token_issues_each_worker_id_its_own_token_once(replicas, tmp_path):
    one, two, made, url = replicas

    async def scenario():
        first = LightAgent(one.address, "emb", "w-boot", token=made["boot"], state_dir=tmp_path).start()
        await asyncio.wait_for(first.loop.connected.wait(), 10)
        (kept,) = tmp_path.glob("*.token")
        assert stat.S_IMODE(os.stat(kept).st_mode) == 0o600
        engine, tokens, authenticator = _token_service(url)
        try:
            issued = authenticator.authenticate(kept.read_text().strip())
            assert (issued.role, issued.endpoint, issued.worker_id) == (Role.AGENT, "emb", "w-boot")
            assert issued.name in {t.name for t in tokens.list()} and kept.read_text().strip() != made["boot"]
        finally:
            engine.dispose()
        await first.stop()
        release = threading.Event()
        # Issued once: the bootstrap token cannot claim that id again (held or free).
        err = await asyncio.to_thread(refusal, hello_stream(two.address, made["boot"], "w-boot", release))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "has its own token already" in err.details()
        release.set()
        # The worker, restarted elsewhere, connects with the token it kept.
        again = LightAgent(two.address, "emb", "w-boot", token=made["boot"], state_dir=tmp_path).start()
        await asyncio.wait_for(again.loop.connected.wait(), 10)
        old_token = kept.read_text().strip()
        assert again.loop.issued_token == old_token
        # An admin takes the id over (its token leaked, say): the worker's own token is refused, it asks the
        # bootstrap token again and is issued a new one.
        _, fleet = stubs(one.address, made["root"])
        taken = fleet.TakeOverWorker(apb.TakeOverWorkerRequest(endpoint="emb", worker_id="w-boot", reason="rotate"))
        assert taken.ended_stream and len(taken.revoked_tokens) == 1
        await eventually(lambda: again.loop.connected.is_set() and again.loop.issued_token not in (None, old_token),
                         what="a new token issued")
        assert kept.read_text().strip() == again.loop.issued_token
        await again.stop()

    asyncio.run(scenario())


def test_a_lease_of_a_replica_that_died_expires_and_frees_its_worker_id(db_url):
    engine = open_engine(db_url)
    upgrade(engine)
    identity = WorkerIdentity(unit_of_work_factory(engine))
    shared, other = Principal("shared", Role.AGENT, "emb", token_id=1), Principal("other", Role.AGENT, "emb", token_id=2)
    try:
        identity.claim(shared, "emb", "w1", "replica-a", "stream-a")
        with pytest.raises(AlreadyExists):
            identity.claim(other, "emb", "w1", "replica-b", "stream-b")
        with pytest.raises(AlreadyExists):  # a shared token cannot take over its own live id either
            identity.claim(shared, "emb", "w1", "replica-b", "stream-b")
        # Replica a stops extending its leases (it died): once the lease is past, the id is free.
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE worker_leases SET expires_at = acquired_at"))
        identity.claim(other, "emb", "w1", "replica-b", "stream-b")
        held, _ = identity.heartbeat("replica-a", [])
        assert held == set()  # so replica a, if it comes back, ends its stream
        assert identity.heartbeat("replica-b", [])[0] == {"stream-b"}
    finally:
        engine.dispose()
    for worker_id in ("w1", "Search_Worker 0", "é" * 40, "-" * 128, "x" * 128):
        name = issued_token_name("emb", worker_id)
        assert not lang.endpoint_name_errors(name, "name"), name


def test_a_token_that_expires_ends_its_streams_too(replicas):

    import sqlalchemy as sa

    one, two, _, url = replicas
    engine, tokens, _ = _token_service(url)
    short, _ = tokens.create("short-lived", "agent", "emb", expires_in=timedelta(hours=1))

    async def scenario():
        agent = LightAgent(two.address, "emb", "w-short", token=short).start()
        await asyncio.wait_for(agent.loop.connected.wait(), 10)
        with engine.begin() as conn:  # its hour is up
            conn.execute(sa.text("UPDATE tokens SET expires_at = CURRENT_TIMESTAMP WHERE name = 'short-lived'"))
        await eventually(lambda: agent.loop.last_error.startswith("UNAUTHENTICATED"), timeout=5, what="stream ended")
        await agent.stop()

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()


def test_a_batch_of_claims_decides_each_on_its_own(db_url):
    engine = open_engine(db_url)
    upgrade(engine)
    identity = WorkerIdentity(unit_of_work_factory(engine))
    shared, other = Principal("shared", Role.AGENT, "emb", token_id=1), Principal("other", Role.AGENT, "emb", token_id=2)
    own = Principal("w9-own", Role.AGENT, "emb", worker_id="w9", token_id=3)
    try:
        outcomes = identity.claim_many([
            Claim(other, "emb", "w2", "r", "s-w2"), Claim(shared, "emb", "w1", "r", "s-w1"),
            Claim(other, "emb", "w1", "r", "s-intruder"), Claim(own, "emb", "w1", "r", "s-own"),
        ])
        assert [type(o) for o in outcomes] == [type(None), type(None), AlreadyExists, PermissionDenied]
        with engine.connect() as conn:
            leases = dict(conn.execute(sa.text("SELECT worker_id, stream FROM worker_leases")).all())
        assert leases == {"w1": "s-w1", "w2": "s-w2"}
    finally:
        engine.dispose()
