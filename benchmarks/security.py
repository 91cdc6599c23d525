"""What the security layer costs per call, and how fast hostile requests are turned away.

Starts one control plane in this process (SQLite, loopback) per configuration and times sequential
GetEndpoint calls: no tokens on plaintext (the demo), tokens on plaintext, tokens over TLS (a
run-time CA from trustme). Then times the refusal of two requests that used to exhaust the server: a
3.8 MB glob in ResolvePolicy and a 100,000-deep artifact. With --server it times that server instead
(pass --token and, for TLS, --tls-ca).

Usage: python benchmarks/security.py [--calls 500] [--server HOST:PORT --token T --tls-ca CA.pem]
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
from mixprec.v1 import policy_pb2 as pb
from mixprec.v1 import policy_pb2_grpc

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
    print(header)
    base = statistics.median(results[0][1])
    for label, times in results:
        print(row(label, times, base))
    print()
    print(f"{'hostile request':<38} {'ms':>8}  answer")
    for name, ms, code in refusals:
        print(f"{name:<38} {ms:>8.1f}  {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
