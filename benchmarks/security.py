"""What the security layer costs per call, and how fast hostile requests are turned away.

Starts one control plane in this process (SQLite, loopback) per configuration and times sequential
GetEndpoint calls: no tokens on plaintext (the demo), tokens on plaintext, tokens over TLS (a
run-time CA from trustme). Then times the refusal of two requests that used to exhaust the server: a
3.8 MB glob in ResolvePolicy and a 100,000-deep artifact. Then hostile bytes: policy YAML 100,000 deep
and alias bombs given to the CLI, escape sequences in a NACK and a reason shown by `mixprec fleet` and
`mixprec audit`, damaged worker state files, an unwritable state path and an exception in the sync
loop (how long each takes to be refused or survived, and how). Then what hostile but legal calls cost
the others on a server with tokens: 20,000-name hellos beside an activate, a report flood, fresh
worker ids, four worst-case resolutions beside cheap reads, request ids reused, webhooks to private
addresses, and a worker's InferenceService called without a token, with garbage and oversize.
Then two replicas over one database play hostile agents: a shared token claiming a live worker id
through the other replica, and a revoked token's streams on both replicas, timed until they close
(the README promises 5 s), the freed worker id taken by a new token, and an admin's takeover of it
closing that stream on the other replica. With --server it times that server instead (pass --token
and, for TLS, --tls-ca).

Usage: python benchmarks/security.py [--calls 500] [--skip-costs] [--resolve-layers N] [--db URL] [--redis URL]
       python benchmarks/security.py --server HOST:PORT --token T [--tls-ca CA.pem]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import math
import os
import pathlib
import statistics
import sys
import tempfile
import threading
import time

import grpc

from mixprec import transport
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc, auth_pb2, auth_pb2_grpc, policy_pb2_grpc
from mixprec.v1 import policy_pb2 as pb

LAYERS = [f"layers.{i}.{g}" for i in range(6) for g in ("attention.q_proj", "mlp.up_proj", "mlp.down_proj")]


class InProcessServer:
    def __init__(self, db_url: str, **options):
        from controlplane.app import ControlPlane

        self.plane = ControlPlane(db_url, "127.0.0.1:0", **options)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        port = asyncio.run_coroutine_threadsafe(self.plane.start(), self.loop).result(60)
        self.address = f"127.0.0.1:{port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.plane.stop(grace=1), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def time_calls(stub, calls: int) -> list[float]:
    request = pb.GetEndpointRequest(name="emb")
    for _ in range(20):  # warm the connection (and the TLS session, the token check cache)
        stub.GetEndpoint(request, timeout=10)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        stub.GetEndpoint(request, timeout=10)
        times.append((time.perf_counter() - started) * 1000)
    return times


def refusal_ms(stub) -> list[tuple[str, float, str]]:
    cases = [
        ("ResolvePolicy, 3.8 MB glob", stub.ResolvePolicy,
         pb.ResolvePolicyRequest(endpoint="emb", rules=[pb.Rule(match="*a" * 1_900_000, precision="fp8")])),
        ("CreatePolicy, artifact 100,000 deep", stub.CreatePolicy,
         pb.CreatePolicyRequest(endpoint="emb", parent_version=1, rules=[pb.Rule(match="*", precision="fp8")],
                                artifact_json="[" * 100_000 + "]" * 100_000)),
    ]
    rows = []
    for name, call, request in cases:
        started = time.perf_counter()
        try:
            call(request, timeout=60)
            code = "OK"
        except grpc.RpcError as err:
            code = err.code().name
        rows.append((name, (time.perf_counter() - started) * 1000, code))
    return rows


ESCAPES = "\x1b[2K\x1b[1A\rall layers applied"  # erase the line, go up, overwrite it
ALIAS_BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)) + "rules: *i\n"
BAD_STATE = {
    "version 1e400": '{"endpoint": "bytes", "version": 1e400, "precision_map": {}}',
    "version -1": '{"endpoint": "bytes", "version": -1, "precision_map": {}}',
    "version 2^31": '{"endpoint": "bytes", "version": 2147483648, "precision_map": {}}',
    "100,000 deep": "[" * 100_000 + "]" * 100_000,
}


def _cli(*argv: str) -> tuple[float, int, str]:
    from mixprec.cli.main import main

    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return (time.perf_counter() - started) * 1000, code, out.getvalue()


def _shown(text: str) -> str:
    raw = any(not ch.isprintable() and ch != "\n" for ch in text)
    return "RAW control characters" if raw else ("escaped (\\x1b)" if "\\x1b" in text else "not shown")


async def _agent_run(address: str, worker: str, apply, folder: pathlib.Path | None = None, on_applied=None):
    from worker.state import StateStore
    from worker.sync import AgentIdentity, Backoff, SyncLoop

    state = StateStore(folder, "bytes", worker) if folder else None
    return SyncLoop(address, AgentIdentity("bytes", worker, LAYERS), apply, state=state, on_applied=on_applied,
                    backoff=Backoff(initial=0.05, maximum=0.2))


async def _until(predicate, timeout: float = 20) -> float:
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > timeout:
            return float("nan")
        await asyncio.sleep(0.005)
    return (time.perf_counter() - started) * 1000


def hostile_bytes(address: str, folder: str) -> list[tuple[str, float, str]]:
    """(case, ms, answer) for hostile bytes against a server without tokens (the demo's)."""
    rows = []
    paths = {"policy YAML 100,000 deep": "rules: " + "[" * 100_000 + "]" * 100_000,
             f"policy YAML alias bomb ({len(ALIAS_BOMB)} bytes)": ALIAS_BOMB}
    for name, text in paths.items():
        path = os.path.join(folder, "hostile.yaml")
        pathlib.Path(path).write_text(text)
        ms, code, _ = _cli("--server", address, "policy", "validate", "emb", "-f", path)
        rows.append((name, ms, f"exit {code}"))

    channel = transport.channel(address)
    stub, fleet = policy_pb2_grpc.PolicyServiceStub(channel), agent_pb2_grpc.FleetServiceStub(channel)
    stub.CreateEndpoint(pb.CreateEndpointRequest(name="bytes", layers=LAYERS))
    for parent in (0, 1):
        stub.CreatePolicy(pb.CreatePolicyRequest(endpoint="bytes", parent_version=parent,
                                                 rules=[pb.Rule(match="*", precision="fp8")]))
    fleet.Activate(apb.ActivateRequest(endpoint="bytes", version=1, reason=ESCAPES))

    async def refuse(version, precision_map):
        raise ValueError(ESCAPES)

    async def nacked():
        loop = await _agent_run(address, "w-nack", refuse)
        task = asyncio.ensure_future(loop.run())
        await _until(lambda: any(w.last_nack for w in fleet.GetFleet(apb.GetFleetRequest(endpoint="bytes")).workers))
        await _stop(task)

    asyncio.run(nacked())
    for command in ("fleet", "audit"):
        ms, _, out = _cli("--server", address, command, "bytes")
        rows.append((f"escapes shown by `mixprec {command}`", ms, _shown(out)))
    for name, text in BAD_STATE.items():
        rows.append((f"state file {name}", *asyncio.run(_restore(address, pathlib.Path(folder) / name, text))))
    rows.append(("unwritable state path", *asyncio.run(_unwritable(address, fleet, pathlib.Path(folder)))))
    rows.append(("exception in the sync loop", *asyncio.run(_crash(address))))
    return rows


async def _applied(version, precision_map):
    pass


async def _restore(address: str, folder: pathlib.Path, text: str) -> tuple[float, str]:
    folder.mkdir()
    loop = await _agent_run(address, "w-state", _applied, folder)
    loop._state.path.write_text(text)
    started = time.perf_counter()
    try:
        await loop.restore()
    except Exception as err:  # noqa: BLE001 - what the old worker did at every start
        return (time.perf_counter() - started) * 1000, f"crashed ({type(err).__name__})"
    ms = (time.perf_counter() - started) * 1000
    aside = any(folder.glob("*.bad-*"))
    return ms, f"set aside, started at v{loop.version}" if aside else f"kept, started at v{loop.version}"


async def _unwritable(address: str, fleet, folder: pathlib.Path) -> tuple[float, str]:
    (folder / "file").write_text("")
    loop = await _agent_run(address, "w-disk", _applied, folder / "file" / "state")
    task = asyncio.ensure_future(loop.run())
    await _until(lambda: loop.version == 1)
    fleet.Activate(apb.ActivateRequest(endpoint="bytes", version=2))
    ms = await _until(lambda: loop.version == 2)
    await _stop(task)
    fleet.Activate(apb.ActivateRequest(endpoint="bytes", version=1))
    return ms, "sync ENDED" if math.isnan(ms) else "sync went on (next version applied)"


async def _crash(address: str) -> tuple[float, str]:
    failed = []

    async def fail_once(version, precision_map):
        if not failed:
            failed.append(time.perf_counter())
            raise RuntimeError("injected")

    loop = await _agent_run(address, "w-crash", _applied, on_applied=fail_once)
    task = asyncio.ensure_future(loop.run())
    await _until(lambda: bool(failed))
    await _until(lambda: loop._outbox is None, timeout=5)  # the failed session is over
    restarted = not math.isnan(await _until(loop.connected.is_set, timeout=20))
    ms = (time.perf_counter() - failed[0]) * 1000
    await _stop(task)
    return ms, "restarted after a backoff" if restarted else "sync ENDED"


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0.2)  # the server sees the stream end before it is stopped


def _answer(call, *args, **kwargs) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        call(*args, **kwargs)
        code = "OK"
    except grpc.RpcError as err:
        code = err.code().name
    return (time.perf_counter() - started) * 1000, code


def hostile_hellos(server, stub) -> list[tuple[str, float, str]]:
    """Two streams sending 20,000-name hellos that differ from the catalog, one after another, while
    an operator activates three times: the activations' answers and time, and the hellos' refusal time."""
    from mixprec.v1 import agent_pb2 as apb
    from mixprec.v1 import agent_pb2_grpc

    catalog = [f"layers.{i}.mlp.up_proj" for i in range(20_000)]
    stub.CreateEndpoint(pb.CreateEndpointRequest(name="big", layers=catalog))
    for parent in range(2):
        stub.CreatePolicy(pb.CreatePolicyRequest(endpoint="big", parent_version=parent,
                                                 rules=[pb.Rule(match=f"layers.{parent}.*", precision="fp8")]))
    agents = agent_pb2_grpc.AgentServiceStub(server.channel)
    fleet = agent_pb2_grpc.FleetServiceStub(server.channel)
    hello = apb.AgentMessage(hello=apb.Hello(endpoint="big", worker_id="hostile",
                                             layers=[f"layers.{i}.mlp.xx_proj" for i in range(20_000)]))
    stop, hellos = threading.Event(), []

    def hostile():
        while not stop.is_set():
            hellos.append(_answer(lambda: list(agents.Connect(iter([hello]), timeout=120))))

    threads = [threading.Thread(target=hostile) for _ in range(2)]
    for thread in threads:
        thread.start()
    activations = [_answer(fleet.Activate, apb.ActivateRequest(endpoint="big", version=v), timeout=20)
                   for v in (1, 2, 1)]
    stop.set()
    for thread in threads:
        thread.join()
    codes = sorted({code for _, code in activations})
    return [("3 activates beside 20,000-name hellos", max(ms for ms, _ in activations), "/".join(codes)),
            (f"20,000-name hello (median of {len(hellos)})", statistics.median(ms for ms, _ in hellos),
             "/".join(sorted({code for _, code in hellos})))]


def report_flood(server, stub, db_url: str) -> list[tuple[str, float, str]]:
    """One stream sends 2,000 reports at once, then its hello-mates' honest reports go on."""
    import sqlalchemy as sa

    from mixprec.v1 import agent_pb2 as apb
    from mixprec.v1 import agent_pb2_grpc

    stub.CreateEndpoint(pb.CreateEndpointRequest(name="flood", layers=LAYERS))
    agents = agent_pb2_grpc.AgentServiceStub(server.channel)
    hello = apb.AgentMessage(hello=apb.Hello(endpoint="flood", worker_id="flood", layers=LAYERS))
    reports = [apb.AgentMessage(report=apb.Report(kind=apb.Report.SERVING, version=0, report_id=f"r{i}",
                                                  throughput=1.0, requests=1)) for i in range(2000)]
    ms, code = _answer(lambda: list(agents.Connect(iter([hello, *reports]), timeout=120)))
    asyncio.run_coroutine_threadsafe(server.plane.recorder.flush(), server.loop).result(60)
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT COUNT(*) FROM reports WHERE worker_id = 'flood'")).scalar()
    engine.dispose()
    return [("2,000 reports on one stream", ms, f"{stored} stored ({code})")]


def fresh_worker_ids(server, limit: int) -> list[tuple[str, float, str]]:
    """Hellos under ever new worker ids of one token, each stream left open: where they stop."""
    from mixprec.v1 import agent_pb2 as apb
    from mixprec.v1 import agent_pb2_grpc

    policy_pb2_grpc.PolicyServiceStub(server.channel).CreateEndpoint(pb.CreateEndpointRequest(name="ids", layers=LAYERS))
    agents = agent_pb2_grpc.AgentServiceStub(server.channel)
    accepted, refused, calls, started = 0, "", [], time.perf_counter()
    for i in range(limit + 1):
        call = agents.Connect(iter([apb.AgentMessage(hello=apb.Hello(endpoint="ids", worker_id=f"id-{i}",
                                                                   layers=LAYERS))]), timeout=60)
        try:
            call.initial_metadata()
            next(call, None)
        except grpc.RpcError as err:
            refused = err.code().name
        calls.append(call)
        accepted = i + 1 if not refused else accepted
    ms = (time.perf_counter() - started) * 1000
    for call in calls:
        call.cancel()
    return [(f"{limit + 1} fresh worker ids (limit {limit})", ms, f"{accepted} accepted, then {refused or 'none'}")]


def resolutions(server, stub, viewer_stub, layers: int) -> list[tuple[str, float, str]]:
    """Four of a viewer's worst legal ResolvePolicy at once (1,000 rules over the catalog), beside cheap
    GetEndpoint calls of another token: how many run, and how much slower the cheap calls got."""
    catalog = [f"layers.{i}.mlp.up_proj" for i in range(layers)]
    stub.CreateEndpoint(pb.CreateEndpointRequest(name="wide", layers=catalog))
    rules = [pb.Rule(match=f"layers.*{i}.mlp.*", precision="fp8") for i in range(min(1000, 2_000_000 // layers))]
    worst = pb.ResolvePolicyRequest(endpoint="wide", rules=rules)
    idle = time_calls(stub, 100)
    started = time.perf_counter()
    calls = [viewer_stub.ResolvePolicy.future(worst, timeout=600) for _ in range(4)]
    busy = []
    while not all(c.done() for c in calls):
        started = time.perf_counter()
        stub.GetEndpoint(pb.GetEndpointRequest(name="emb"), timeout=60)
        busy.append((time.perf_counter() - started) * 1000)
    elapsed = (time.perf_counter() - started) * 1000
    codes = []
    for c in calls:
        try:
            c.result()
            codes.append("OK")
        except grpc.RpcError as err:
            codes.append(err.code().name)
    ratio = statistics.median(busy) / statistics.median(idle)
    summary = ", ".join(f"{codes.count(c)} {c}" for c in sorted(set(codes)))
    return [(f"4 x ResolvePolicy, {len(rules)} rules x {layers}", elapsed, summary),
            ("GetEndpoint p50 during them / idle", ratio, f"{len(busy)} calls")]


def request_ids(stub, fleet) -> list[tuple[str, float, str]]:
    from mixprec.v1 import agent_pb2 as apb

    for name in ("ida", "idb"):
        stub.CreateEndpoint(pb.CreateEndpointRequest(name=name, layers=LAYERS))
        stub.CreatePolicy(pb.CreatePolicyRequest(endpoint=name, rules=[pb.Rule(match="*", precision="fp8")]))
    fleet.Activate(apb.ActivateRequest(endpoint="ida", version=1, request_id="deploy-42"))
    ms, code = _answer(fleet.Activate, apb.ActivateRequest(endpoint="idb", version=1, request_id="deploy-42"))
    changed = stub.GetEndpoint(pb.GetEndpointRequest(name="idb")).active_version == 1
    other_ms, other = _answer(fleet.Activate, apb.ActivateRequest(endpoint="ida", version=0, request_id="deploy-42"))
    return [("request id reused on another endpoint", ms, f"{code}, applied: {'yes' if changed else 'NO'}"),
            ("request id reused with other parameters", other_ms, other)]


def webhooks(server) -> list[tuple[str, float, str]]:
    from mixprec.v1 import notify_pb2 as npb
    from mixprec.v1 import notify_pb2_grpc

    notify = notify_pb2_grpc.NotificationServiceStub(server.channel)
    return [(f"SetWebhook to {url.split('/')[2]}",
             *_answer(notify.SetWebhook, npb.SetWebhookRequest(endpoint="emb", name="hook", url=url)))
            for url in ("http://127.0.0.1:6379/", "http://169.254.169.254/latest/meta-data")]


def inference(folder: str, token: str) -> list[tuple[str, float, str]]:
    """A worker's InferenceService (the tiny random decoder) with client tokens required."""
    from mixprec.v1 import inference_pb2 as ipb
    from mixprec.v1 import inference_pb2_grpc
    from worker.agent import AgentConfig, WorkerAgent
    from worker.runtime import build_runtime

    tokens = os.path.join(folder, "client-tokens")
    with open(tokens, "w") as f:
        f.write(token + "\n")
    agent = WorkerAgent(AgentConfig(endpoint="llm", model="tiny-llama", server="127.0.0.1:1",
                                    inference_listen="127.0.0.1:0", client_tokens=tokens),
                        build_runtime("tiny-llama", eval_samples=0))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(agent.start_inference(), loop).result(60)
    address = f"127.0.0.1:{port}"
    try:
        anonymous = inference_pb2_grpc.InferenceServiceStub(grpc.insecure_channel(address))
        client = transport.channel(address, token)
        garbage = client.unary_unary("/mixprec.v1.InferenceService/Embed", request_serializer=None)
        oversize = ipb.EmbedRequest(texts=["x" * 20_000] * 128)  # within the old limits (256 texts of 20,000)
        return [("InferenceService.Embed without a token", *_answer(anonymous.Embed, ipb.EmbedRequest(texts=["x"]))),
                ("InferenceService.Embed, garbage bytes", *_answer(garbage, b"\xff\xff\xff garbage")),
                ("InferenceService.Embed, 128 x 20,000 chars",
                 *_answer(inference_pb2_grpc.InferenceServiceStub(client).Embed, oversize, timeout=120))]
    finally:
        asyncio.run_coroutine_threadsafe(agent._server.stop(0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)


def legal_but_costly(folder: str, layers: int) -> list[tuple[str, float, str]]:
    from controlplane.auth import TokenService
    from controlplane.storage.database import ensure_schema, open_engine
    from controlplane.storage.unit_of_work import unit_of_work_factory

    db = f"sqlite:///{folder}/costs.db"
    engine = open_engine(db)
    ensure_schema(engine)
    tokens = TokenService(unit_of_work_factory(engine))
    admin, _ = tokens.create("bench-admin", "admin")
    viewer, _ = tokens.create("bench-viewer", "viewer")
    engine.dispose()
    server = InProcessServer(db, auth="required", stream_limits={"max_worker_ids_per_token": 50})
    try:
        server.channel = transport.channel(server.address, admin)
        stub = policy_pb2_grpc.PolicyServiceStub(server.channel)
        viewer_stub = policy_pb2_grpc.PolicyServiceStub(transport.channel(server.address, viewer))
        from mixprec.v1 import agent_pb2_grpc

        stub.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
        rows = hostile_hellos(server, stub)
        rows += report_flood(server, stub, db)
        rows += fresh_worker_ids(server, 50)
        rows += resolutions(server, stub, viewer_stub, layers)
        rows += request_ids(stub, agent_pb2_grpc.FleetServiceStub(server.channel))
        rows += webhooks(server)
    finally:
        server.stop()
    return rows + inference(folder, admin)


class AgentStream:
    """A raw Connect stream held open in a thread until `close()`; `wait()` gives its end."""

    def __init__(self, address: str, token: str, worker_id: str):
        self._release = threading.Event()
        self.ended = threading.Event()
        self.code = "OK"

        def outgoing():
            yield apb.AgentMessage(hello=apb.Hello(endpoint="emb", worker_id=worker_id, layers=LAYERS))
            self._release.wait(60)

        self.call = agent_pb2_grpc.AgentServiceStub(transport.channel(address, token)).Connect(outgoing(), timeout=60)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        try:
            for _ in self.call:
                pass
        except grpc.RpcError as err:
            self.code = err.code().name
        self.ended.set()

    def accepted(self) -> str:
        """Waits for the hello's answer: OK, or the refusal's code."""
        try:
            self.call.initial_metadata()
        except grpc.RpcError as err:
            return err.code().name
        return "OK" if not self.ended.wait(0.2) else self.code

    def close(self) -> None:
        self._release.set()


def identity_rows(db: str, redis_url: str | None) -> list[tuple[str, float, str]]:
    """Hostile agents against two replicas over `db`: (case, ms, answer)."""
    from controlplane.auth import TokenService
    from controlplane.storage.database import ensure_schema, open_engine
    from controlplane.storage.unit_of_work import unit_of_work_factory

    engine = open_engine(db)
    ensure_schema(engine)
    tokens = TokenService(unit_of_work_factory(engine))
    root, _ = tokens.create("bench-root", "admin")
    shared, _ = tokens.create("bench-agents", "agent", "emb")
    engine.dispose()
    one, two = (InProcessServer(db, auth="required", redis_url=redis_url) for _ in range(2))
    rows = []
    try:
        policy_pb2_grpc.PolicyServiceStub(transport.channel(one.address, root)).CreateEndpoint(
            pb.CreateEndpointRequest(name="emb", layers=LAYERS))
        here, there = AgentStream(one.address, shared, "w1"), AgentStream(two.address, shared, "w2")
        assert here.accepted() == "OK" and there.accepted() == "OK"
        started = time.perf_counter()
        intruder = AgentStream(two.address, shared, "w1")
        rows.append(("claim a live worker id, other replica", (time.perf_counter() - started) * 1000,
                     intruder.accepted()))
        intruder.close()
        admin = auth_pb2_grpc.TokenServiceStub(transport.channel(one.address, root))
        started = time.perf_counter()
        admin.RevokeToken(auth_pb2.RevokeTokenRequest(name="bench-agents"), timeout=10)
        for label, stream in (("revoked: stream closed, same replica", here),
                              ("revoked: stream closed, other replica", there)):
            closed = stream.ended.wait(30)
            rows.append((label, (time.perf_counter() - started) * 1000, stream.code if closed else "still open"))
        fresh = admin.CreateToken(auth_pb2.CreateTokenRequest(name="bench-agents-2", role="agent", endpoint="emb"),
                                  timeout=10).secret
        started = time.perf_counter()
        successor = AgentStream(two.address, fresh, "w1")
        rows.append(("freed worker id, new token connects", (time.perf_counter() - started) * 1000,
                     successor.accepted()))
        started = time.perf_counter()
        agent_pb2_grpc.FleetServiceStub(transport.channel(one.address, root)).TakeOverWorker(
            apb.TakeOverWorkerRequest(endpoint="emb", worker_id="w1", reason="benchmark"), timeout=10)
        closed = successor.ended.wait(30)
        rows.append(("admin takeover: stream closed, other", (time.perf_counter() - started) * 1000,
                     successor.code if closed else "still open"))
        successor.close()
        for stream in (here, there):
            stream.close()
    finally:
        one.stop()
        two.stop()
    return rows


def configurations(folder: str):
    """(label, server options, client options) with the tokens and certificates they need."""
    import trustme

    from controlplane.auth import TokenService
    from controlplane.storage.database import ensure_schema, open_engine
    from controlplane.storage.unit_of_work import unit_of_work_factory

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = {name: os.path.join(folder, name) for name in ("ca.pem", "cert.pem", "key.pem")}
    ca.cert_pem.write_to_path(paths["ca.pem"])
    cert.cert_chain_pems[0].write_to_path(paths["cert.pem"])
    cert.private_key_pem.write_to_path(paths["key.pem"])
    tls = transport.server_credentials(paths["cert.pem"], paths["key.pem"])
    db = f"sqlite:///{folder}/bench.db"
    engine = open_engine(db)
    ensure_schema(engine)
    token, _ = TokenService(unit_of_work_factory(engine)).create("bench", "admin")
    engine.dispose()
    return db, [
        ("no tokens, plaintext (demo)", {"auth": "off"}, {}),
        ("tokens, plaintext", {"auth": "required"}, {"token": token}),
        ("tokens, TLS", {"auth": "required", "tls_credentials": tls}, {"token": token, "tls_ca": paths["ca.pem"]}),
    ]


def row(label: str, times: list[float], base: float | None) -> str:
    p50 = statistics.median(times)
    p99 = sorted(times)[int(0.99 * (len(times) - 1))]
    ratio = f"{p50 / base:5.2f}x" if base else "    -"
    return f"{label:<30} {len(times):>6} {p50:>8.2f} {p99:>8.2f}  {ratio}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="timed GetEndpoint calls per configuration")
    parser.add_argument("--server", default=None, help="time this control plane instead (needs endpoint 'emb')")
    parser.add_argument("--token", default=os.environ.get("MIXPREC_TOKEN"), help="token for --server")
    parser.add_argument("--tls-ca", default=os.environ.get("MIXPREC_TLS_CA"), help="CA for --server's TLS")
    parser.add_argument("--skip-costs", action="store_true", help="leave out the hostile but legal calls (issue 22)")
    parser.add_argument("--resolve-layers", type=int, default=2000,
                        help="catalog size of the worst-case resolutions (rules x layers stays at 2,000,000)")
    parser.add_argument("--db", default=None, metavar="URL",
                        help="an empty, migrated database for the two-replica cases (default: a SQLite file)")
    parser.add_argument("--redis", default=None, metavar="URL",
                        help="Redis for the two-replica cases (default none: revocations found by polling)")
    args = parser.parse_args()
    from mixprec.logs import configure_logging

    configure_logging("CRITICAL")  # the hostile cases log what they survive; the table says it
    header = f"{'configuration':<30} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8}  vs first"
    if args.server:
        stub = policy_pb2_grpc.PolicyServiceStub(transport.channel(args.server, args.token, args.tls_ca))
        print(header)
        print(row(args.server, time_calls(stub, args.calls), None))
        return 0
    results, refusals, hostile, costs, identity = [], [], [], [], []
    with tempfile.TemporaryDirectory() as folder:
        db, configs = configurations(folder)
        for label, server_options, client_options in configs:
            server = InProcessServer(db, **server_options)
            try:
                stub = policy_pb2_grpc.PolicyServiceStub(transport.channel(server.address, **client_options))
                if not results:
                    stub.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
                    stub.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", rules=[pb.Rule(match="*", precision="fp8")]))
                results.append((label, time_calls(stub, args.calls)))
                if not server_options.get("auth") == "required":
                    hostile = hostile_bytes(server.address, folder)
                if client_options.get("tls_ca"):
                    refusals = refusal_ms(stub)
            finally:
                server.stop()
        if not args.skip_costs:
            costs = legal_but_costly(folder, args.resolve_layers)
        identity = identity_rows(args.db or f"sqlite:///{folder}/replicas.db", args.redis)
    print(header)
    base = statistics.median(results[0][1])
    for label, times in results:
        print(row(label, times, base))
    print()
    print(f"{'hostile request':<38} {'ms':>8}  answer")
    for name, ms, code in refusals + hostile:
        print(f"{name:<38} {ms:>8.1f}  {code}")
    if costs:
        print()
        print(f"{'hostile but legal (issue 22)':<44} {'ms':>8}  answer  (a ratio row: x, not ms)")
        for name, ms, answer in costs:
            print(f"{name:<44} {ms:>8.1f}  {answer}")
    print()
    fan_out = "Redis" if args.redis else "no Redis: polling"
    print(f"hostile agents, two replicas over one database ({fan_out}); a revocation must bite within 5,000 ms")
    print(f"{'case':<38} {'ms':>8}  answer")
    for name, ms, code in identity:
        print(f"{name:<38} {ms:>8.1f}  {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
