"""What the security layer costs per call, and how fast hostile requests are turned away.

Starts one control plane in this process (SQLite, loopback) per configuration and times sequential
GetEndpoint calls: no tokens on plaintext (the demo), tokens on plaintext, tokens over TLS (a
run-time CA from trustme). Then times the refusal of two requests that used to exhaust the server: a
3.8 MB glob in ResolvePolicy and a 100,000-deep artifact. Then two replicas over one database play
hostile agents: a shared token claiming a live worker id through the other replica, and a revoked
token's streams on both replicas, timed until they close (the README promises 5 s), the freed
worker id taken by a new token, and an admin's takeover of it closing that stream on the other replica. With --server it times that server instead (pass --token and, for
TLS, --tls-ca).

Usage: python benchmarks/security.py [--calls 500] [--db URL] [--redis URL]
       python benchmarks/security.py --server HOST:PORT --token T [--tls-ca CA.pem]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
    parser.add_argument("--db", default=None, metavar="URL",
                        help="an empty, migrated database for the two-replica cases (default: a SQLite file)")
    parser.add_argument("--redis", default=None, metavar="URL",
                        help="Redis for the two-replica cases (default none: revocations found by polling)")
    args = parser.parse_args()
    header = f"{'configuration':<30} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8}  vs first"
    if args.server:
        stub = policy_pb2_grpc.PolicyServiceStub(transport.channel(args.server, args.token, args.tls_ca))
        print(header)
        print(row(args.server, time_calls(stub, args.calls), None))
        return 0
    results, refusals = [], []
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
                if client_options.get("tls_ca"):
                    refusals = refusal_ms(stub)
            finally:
                server.stop()
        identity = identity_rows(args.db or f"sqlite:///{folder}/replicas.db", args.redis)
    print(header)
    base = statistics.median(results[0][1])
    for label, times in results:
        print(row(label, times, base))
    print()
    print(f"{'hostile request':<38} {'ms':>8}  answer")
    for name, ms, code in refusals:
        print(f"{name:<38} {ms:>8.1f}  {code}")
    print()
    fan_out = "Redis" if args.redis else "no Redis: polling"
    print(f"hostile agents, two replicas over one database ({fan_out}); a revocation must bite within 5,000 ms")
    print(f"{'case':<38} {'ms':>8}  answer")
    for name, ms, code in identity:
        print(f"{name:<38} {ms:>8.1f}  {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
